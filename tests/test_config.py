import dataclasses

import pytest

from agents.dqn import DQNConfig
from common.validation import ConfigError
from envs import PROTOCOLS, AtariProtocol
from replay.config import ReplayConfig

BAD_AGENT_VALUES = [
    ("torso", "resnet"),
    ("mlp_hidden_sizes", ()),
    ("head", "c51"),
    ("num_bins", 1),
    ("value_max", -20.0),
    ("value_transform", "log"),
    ("transform_eps", 0.0),
    ("discount", 1.5),
    ("n_step", 0),
    ("max_abs_reward", 0.0),
    ("loss", "l1"),
    ("huber_delta", -1.0),
    ("target_update_period_updates", 0),
    ("optimizer", "sgd"),
    ("learning_rate", 0.0),
    ("optimizer_eps", -1e-8),
    ("weight_decay", -1e-4),
    ("weight_decay_form", "coupled"),
    ("max_grad_norm", 0.0),
    ("batch_size", 0),
    ("batch_size", 32.5),
    ("updates_per_call", 0),
    ("epsilon_begin", 1.1),
    ("epsilon_end", -0.1),
    ("epsilon_decay_begin_steps", -1),
    ("epsilon_decay_steps", 0),
    ("eval_epsilon", 2.0),
]


@pytest.mark.parametrize("field,value", BAD_AGENT_VALUES)
def test_every_bad_agent_value_names_its_field(field, value):
  with pytest.raises(ConfigError, match=f"^{field}="):
    DQNConfig(**{field: value})


def test_config_is_frozen_and_accepts_command_line_spellings():
  config = DQNConfig(head="two-hot", value_transform="signed-hyperbolic", mlp_hidden_sizes=[8, 8])
  assert config.head == "two_hot" and config.value_transform == "signed_hyperbolic"
  assert config.mlp_hidden_sizes == (8, 8)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.layer_norm = True


def test_optimizer_reference_values():
  assert DQNConfig(optimizer="rmsprop").resolved_learning_rate == 2.5e-4
  assert DQNConfig(optimizer="rmsprop").resolved_optimizer_eps == pytest.approx(0.01 / 32**2)
  assert DQNConfig(optimizer="adam").resolved_learning_rate == 6.25e-5
  assert DQNConfig(optimizer="adam").resolved_optimizer_eps == 1.5e-4
  assert DQNConfig(optimizer="adam", learning_rate=1e-3).resolved_learning_rate == 1e-3


@pytest.mark.parametrize(
    "field,value",
    [("sticky_action_prob", 1.5), ("frame_skip", 0), ("obs_size", 4), ("stack_frames", 0), ("noop_max", -1), ("max_episode_frames", 2)],
)
def test_every_bad_protocol_value_names_its_field(field, value):
  with pytest.raises(ConfigError, match=f"^{field}="):
    AtariProtocol(**{field: value})


def test_protocol_defaults_are_machado_2018_and_dqn_zoo_differs_where_it_should():
  p = AtariProtocol()
  assert (p.sticky_action_prob, p.full_action_space, p.frame_skip, p.max_pool) == (0.25, False, 4, True)
  assert (p.obs_size, p.stack_frames, p.noop_min, p.noop_max, p.terminal_on_life_loss) == (84, 4, 0, 0, False)
  assert (p.max_episode_frames, p.max_episode_steps, p.fire_reset) == (108_000, 27_000, False)
  assert PROTOCOLS["machado2018"] == p
  zoo = PROTOCOLS["dqn_zoo"]
  assert (zoo.sticky_action_prob, zoo.noop_min, zoo.noop_max, zoo.terminal_on_life_loss) == (0.0, 1, 30, True)
  assert (p.frame_processing, zoo.frame_processing) == ("greyscale_area", "luminance_bilinear")
  assert dataclasses.replace(zoo, sticky_action_prob=0.25, noop_min=0, noop_max=0, terminal_on_life_loss=False,
                             frame_processing="greyscale_area") == p


@pytest.mark.parametrize(
    "field,value",
    [("max_size", 0), ("min_replay_size", 0), ("samples_per_insert", 0.0), ("samples_per_insert_tolerance", -1.0),
     ("priority_exponent", -0.5), ("importance_sampling_exponent_begin", 1.5), ("importance_sampling_exponent_end", -0.1),
     ("importance_sampling_anneal_updates", 0), ("priority_eps", 0.0), ("initial_priority", 0.0),
     ("prefetch_batches", 0), ("publish_params_every_updates", 0)],
)
def test_every_bad_replay_value_names_its_field(field, value):
  with pytest.raises(ConfigError, match=f"^{field}="):
    ReplayConfig(**{field: value})


def test_replay_config_relations_and_schedules():
  with pytest.raises(ConfigError, match="^min_replay_size=200 must not exceed max_size=100"):
    ReplayConfig(max_size=100, min_replay_size=200)
  config = ReplayConfig(min_replay_size=1000, samples_per_insert=8.0, samples_per_insert_tolerance=0.1,
                        importance_sampling_exponent_begin=0.4, importance_sampling_anneal_updates=100)
  assert config.error_buffer == pytest.approx(800.0)
  assert ReplayConfig(min_replay_size=1, samples_per_insert=8.0).error_buffer == 16.0  # Reverb's floor
  assert [config.importance_sampling_exponent(s) for s in (0, 50, 100, 1000)] == pytest.approx([0.4, 0.7, 1.0, 1.0])
