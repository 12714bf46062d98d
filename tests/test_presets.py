"""The presets dqn_zoo, lyle2023, lyle2024 and atari100k against the code they reproduce, value by value.

Each assertion names the source line that fixes its value, at the source's one commit (training.config.
SOURCE_COMMITS; `test_every_citation_of_a_source_names_its_one_commit` holds the code and the docs to it), read
from its mirror with `git show <commit>:<path>`:
  DQN Zoo at 45061f4bbbcfa87d11bbba3cfc2305a650a41c26 (github.com/google-deepmind/dqn_zoo); paths below are
    under dqn_zoo/, and `run_atari.py`, `agent.py` mean double_q/run_atari.py, double_q/agent.py.
  Dopamine at 5873f5494ee0c2d7c016d0ab2ad530354fec59d0 (github.com/google/dopamine); `gin` means
    dopamine/labs/atari_100k/configs/DrQ_eps.gin, the other files are named by their basename:
    dqn_agent.py (dopamine/jax/agents/dqn/), full_rainbow_agent.py (dopamine/jax/agents/full_rainbow/),
    atari_100k_rainbow_agent.py and atari_100k_runner.py (dopamine/labs/atari_100k/), losses.py
    (dopamine/jax/), atari_lib.py and run_experiment.py (dopamine/discrete_domains/).
  networks.py is DQN Zoo's (dqn_zoo/networks.py) where a comment is about dqn_zoo, Dopamine's
    (dopamine/jax/networks.py) where it is about atari100k.
Units: 1 agent step = 4 frames (DQN Zoo num_action_repeats, Dopamine frame_skip); DQN Zoo learns every
learn_period = 16 frames = 4 agent steps, so 1 update = 16 frames. Dopamine counts in agent steps already.
"""

from __future__ import annotations

import collections
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from agents.dqn import epsilon_schedule, make_optimizer
from agents.dqn.config import OPTIMIZER_DEFAULTS
from tests.conftest import ROOT
from training.config import PRESET_NAMES, PRESETS, SOURCE_COMMITS, RunConfig, config_differences

FRAMES_PER_STEP = 4  # run_atari.py:71 num_action_repeats=4; atari_lib.py:183 frame_skip=4
DQN_ZOO_FRAMES_PER_UPDATE = 16  # run_atari.py:101 learn_period=16 (agent.py:156-157: frame_t % learn_period)
NUM_ACTIONS = 6


def test_every_preset_is_a_valid_run_config_under_its_own_name():
  assert sorted(PRESETS) == sorted(PRESET_NAMES)
  for name, preset in PRESETS.items():
    assert preset.preset == name and RunConfig.from_dict(preset.to_dict()) == preset  # re-validated from scratch
  smoke = PRESETS["smoke"]  # minutes on 2 CPU cores (training/config.py), not a source's setting
  assert smoke.agent.torso == "nature" and smoke.env.obs_size == 42 and smoke.total_env_steps <= 50_000


def test_dqn_zoo_preset_matches_dqn_zoo_double_q():
  run = PRESETS["dqn_zoo"]
  env, agent, replay = run.env, run.agent, run.replay

  # Environment.
  assert env.sticky_action_prob == 0.0  # gym_atari.py:53 'repeat_action_probability': 0.0
  assert env.full_action_space is False  # gym_atari.py:54 'full_action_space': False
  assert env.frame_skip == FRAMES_PER_STEP  # run_atari.py:71 num_action_repeats=4 (on a frameskip-1 env, gym_atari.py:52)
  assert env.max_pool is True  # run_atari.py:150 num_pooled_frames=2 (processors.py:491-492: max of the last 2 frames)
  assert env.obs_size == 84  # run_atari.py:60-61 environment_height=84, environment_width=84
  assert env.stack_frames == 4  # run_atari.py:72 num_stacked_frames=4
  # run_atari.py:128-133 RandomNoopsEnvironmentWrapper(min_noop_steps=1, max_noop_steps=30) on the raw-frame env;
  # gym_atari.py:187-189 num_steps = randint(min_noop_steps, max_noop_steps + 1): 1..30 raw frames, inclusive.
  assert (env.noop_min, env.noop_max, env.noop_frames_each) == (1, 30, 1)
  assert env.fire_reset is False  # gym_atari.py:128-199 and processors.py:421-508 press no FIRE at a reset
  assert env.terminal_on_life_loss is True  # run_atari.py:151 zero_discount_on_life_loss=True (processors.py:287-293)
  # processors.py:274-293 only zeroes the discount: the frame stack and transition accumulator carry on.
  assert env.reset_stack_on_life_loss is False
  assert env.life_loss_ends_step is False  # processors.py:421-508 count 4 frames a step whatever the lives do
  # processors.py:491-496: the max of the last 2 RGB frames, rgb2y (:367-371), a PIL bilinear resize (:374-387);
  # equal to DQN Zoo's processing of real frames in tests/test_frames.py.
  assert env.frame_processing == "luminance_bilinear"
  # run_atari.py:68-70 max_frames_per_episode=108000, counted by parts.run_loop over agent frames (run_atari.py:264),
  # a truncation (parts.py:115-117 relabels LAST, the discount stays 1).
  assert env.max_episode_frames == 108_000
  assert env.cap_is_terminal is False

  # Network: run_atari.py:141 networks.double_dqn_atari_network (networks.py:338-349).
  assert agent.torso == "nature"  # networks.py:192-201 dqn_torso: 32x8x8/4, 64x4x4/2, 64x3x3/1
  assert agent.conv_padding == "VALID"  # networks.py:99 padding='VALID'
  assert agent.layer_norm is False  # networks.py:192-201, 214-218: no normalisation
  assert agent.head == "scalar" and agent.dueling is False  # networks.py:207-221 dqn_value_head: linear(512), relu, linear
  assert agent.head_bias == "shared"  # networks.py:345 shared_bias=True -> linear_with_shared_bias (:120-134)
  assert agent.initializer == "dqn_zoo"  # networks.py:58-79 U(-1/sqrt(fan_in), 1/sqrt(fan_in)), w_init and b_init (:97-98, :113)
  assert agent.random_shift_pad == 0 and agent.intensity_scale == 0.0  # agent.py:85-111: no augmentation

  # Learning target and loss: agent.py:97-110.
  assert agent.discount == 0.99  # run_atari.py:91 additional_discount=0.99 (processors.py:483-487)
  assert agent.n_step == 1  # run_atari.py:230 replay_lib.TransitionAccumulator(): 1-step (replay.py:771-800)
  assert agent.clip_rewards is True and agent.max_abs_reward == 1.0  # run_atari.py:92 max_abs_reward=1.0 (processors.py:477-481)
  assert agent.loss == "mse"  # agent.py:108 rlax.l2_loss = 0.5 td^2, agent.py:110 jnp.mean over the batch
  assert agent.td_error_grad_clip == 1.0 / 32  # run_atari.py:88 grad_error_bound=1/32; agent.py:105-107 rlax.clip_gradient
  assert agent.max_grad_norm is None and agent.weight_decay == 0.0  # agent.py:113-121: no other gradient transform
  # run_atari.py:85-87 target_network_update_period=int(1.2e5) frames; agent.py:159-160 counts frames:
  # 120,000 frames / 16 frames per update = 7,500 updates.
  assert agent.target_update_period_updates == 120_000 // DQN_ZOO_FRAMES_PER_UPDATE == 7_500
  assert agent.batch_size == 32  # run_atari.py:67 batch_size=32

  # Optimizer: run_atari.py:216-221 optax.rmsprop(learning_rate, decay=0.95, eps, centered=True).
  assert agent.optimizer == "rmsprop"
  assert agent.resolved_learning_rate == 0.00025  # run_atari.py:89 learning_rate=0.00025
  assert agent.resolved_optimizer_eps == 0.01 / 32**2  # run_atari.py:90 optimizer_epsilon=0.01/32**2
  assert OPTIMIZER_DEFAULTS["rmsprop"]["decay"] == 0.95  # run_atari.py:218 decay=0.95 (centred: test_optimizers_...)

  # Exploration: run_atari.py:171-184 LinearSchedule over frames, agent.py:212 evaluated at frame_t.
  assert agent.epsilon_begin == 1.0  # run_atari.py:73-75 exploration_epsilon_begin_value=1.0
  assert agent.epsilon_end == 0.01  # run_atari.py:76-78 exploration_epsilon_end_value=0.01
  # run_atari.py:172-176 begin_t = 0.05 * 1e6 * 4 = 200,000 frames = 50,000 agent steps.
  assert agent.epsilon_decay_begin_steps * FRAMES_PER_STEP == int(0.05 * int(1e6) * 4) == 200_000
  # run_atari.py:177-181 decay_steps = 0.02 * 200 * 1e6 = 4,000,000 frames = 1,000,000 agent steps.
  assert agent.epsilon_decay_steps * FRAMES_PER_STEP == int(0.02 * 200 * int(1e6)) == 4_000_000
  assert agent.eval_epsilon == 0.01  # run_atari.py:82-84 eval_exploration_epsilon=0.01

  # Replay: run_atari.py:212-214 TransitionReplay, sampled uniformly.
  assert replay.max_size == 1_000_000  # run_atari.py:62 replay_capacity=int(1e6) transitions (one per agent step)
  # run_atari.py:64-66 min_replay_capacity_fraction=0.05; agent.py:64 0.05 * capacity = 50,000; agent.py:153-154
  # learns only once replay.size >= that.
  assert replay.min_replay_size == int(0.05 * 1_000_000) == 50_000
  # agent.py:156-157, 186: one batch of 32 (run_atari.py:67) every 16 frames = every 4 agent steps, each step
  # inserting one transition: 32 / 4 = 8 samples per insert.
  assert replay.samples_per_insert == 32 / (DQN_ZOO_FRAMES_PER_UPDATE // FRAMES_PER_STEP) == 8.0
  assert replay.prioritized is False  # run_atari.py:212-214 replay_lib.TransitionReplay (uniform)

  # Budget: run_atari.py:94 num_iterations=200 x run_atari.py:95-97 num_train_frames=1e6 per iteration
  # (run_atari.py:265: iteration 0 trains 0 frames) = 200M frames = 50M agent steps.
  assert run.total_env_steps * FRAMES_PER_STEP == 200 * int(1e6)
  # Evaluation: run_atari.py:259-275, every iteration ends with an evaluation of 500k frames (:98-100, :273),
  # iteration 0 (:265, 0 training frames) before any training: every 1M frames = 250,000 agent steps, from step 0;
  # the last after the last iteration (learner_process.py: a finished run evaluates its final weights).
  assert run.eval_every_env_steps * FRAMES_PER_STEP == int(1e6)
  assert run.eval_frames == int(5e5) and run.eval_at_start is True
  # Not fixed by the source in this project's units: DQN Zoo plays one environment in lockstep with the learner
  # (run_atari.py:135, 264), not num_actors x num_envs_per_actor, and pauses training while it evaluates.


def test_lyle2024_preset_is_lyle2023_plus_l2_weight_decay():
  lyle2023, lyle2024 = PRESETS["lyle2023"], PRESETS["lyle2024"]
  # Lyle et al. 2024 ("Disentangling the Causes of Plasticity Loss in Neural Networks", arXiv 2402.18762, abstract):
  # "a combination of layer normalization and weight decay is highly effective at maintaining plasticity". Their
  # weight decay is an L2 penalty on the parameter vector, 1e-5 in their continual supervised experiments (experimental
  # details, as quoted by reading notes: training/config.py). Everything else is lyle2023's.
  assert config_differences(lyle2023, lyle2024) == ["agent.weight_decay", "agent.weight_decay_form", "preset"]
  agent = lyle2024.agent
  assert agent.layer_norm is True and agent.weight_decay == 1e-5 and agent.weight_decay_form == "l2"
  assert agent.decay_layer_norm_params is True  # "the parameter vector": every parameter
  # The penalty 1e-5 * ||w||^2 reaches RMSProp as part of the gradient: with a zero loss gradient the first update
  # is the one centred RMSProp makes of g = 2e-5 * w (optax scale_by_stddev: g / sqrt(nu - mu^2 + eps), nu and mu
  # the (1 - 0.95)-weighted first averages; run_atari.py:89-90 lr and eps, :216-221 decay 0.95).
  params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  optimizer = make_optimizer(agent)
  updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
  g = 2e-5 * np.asarray(params["w"])
  nu, mu = 0.05 * g**2, 0.05 * g
  expected = -2.5e-4 * g / np.sqrt(nu - mu**2 + 0.01 / 32**2)
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_lyle2023_preset_is_dqn_zoo_plus_layer_norm():
  zoo, lyle = PRESETS["dqn_zoo"], PRESETS["lyle2023"]
  # Lyle et al. 2023 ("Understanding Plasticity in Neural Networks", ICML 2023) run "the standard implementation of
  # double DQN (Van Hasselt et al., 2016) provided by Quan & Ostrovski (2020)" (github.com/deepmind/dqn_zoo) and
  # add layer normalization (abstract; sec. 5); training/config.py's comment cites sec. 5 and app. C. Everything
  # else is DQN Zoo's, which test_dqn_zoo_preset_matches_dqn_zoo_double_q checks value by value.
  assert config_differences(zoo, lyle) == ["agent.layer_norm", "preset"]
  assert lyle.agent.layer_norm is True
  # Before each hidden ReLU (networks/torsos.py norm_relu), on the conv and dense layers of the Nature torso.
  network = lyle.agent.make_network(NUM_ACTIONS)
  params = jax.eval_shape(network.init, jax.random.PRNGKey(0), np.zeros((1, 84, 84, 4), np.uint8))  # shapes only
  layer_norms = sorted(name for name in params["params"]["torso"] if name.endswith("_ln"))
  assert layer_norms == ["conv0_ln", "conv1_ln", "conv2_ln", "dense0_ln"]


def test_atari100k_preset_matches_dopamine_drq_eps():
  run = PRESETS["atari100k"]
  env, agent, replay = run.env, run.agent, run.replay

  # Environment: atari_lib.py:80-160 create_atari_environment -> AtariPreprocessing (atari_lib.py:164-372).
  assert env.sticky_action_prob == 0.0  # gin:38 sticky_actions=False -> atari_lib.py:122 repeat_action_probability=0.0
  assert env.full_action_space is False  # atari_lib.py:130-137 gym.make('ALE/<game>-v5') leaves ale_py's default False
  assert env.frame_skip == FRAMES_PER_STEP  # atari_lib.py:183 frame_skip=4 (on frameskip=1, atari_lib.py:133)
  assert env.max_pool is True  # atari_lib.py:322-325 keeps the last 2 frames of a step, atari_lib.py:359-364 max-pools them
  assert env.obs_size == 84  # atari_lib.py:185 screen_size=84
  assert env.stack_frames == 4  # atari_lib.py:50 NATURE_DQN_STACK_SIZE = 4 (dqn_agent.py:43, 264)
  assert env.fire_reset is False  # atari_lib.py:253-264 reset presses no FIRE (FireResetEnv only for PPO, :141-146)
  assert env.terminal_on_life_loss is True  # gin:39 AtariPreprocessing.terminal_on_life_loss = True (atari_lib.py:315-318)
  # atari_100k_runner.py:329-330: on a terminal that is not a game over (a lost life) agent.reset_one zeroes the stack.
  assert env.reset_stack_on_life_loss is True
  # atari_lib.py:305-331: the frame loop breaks at the terminal of a lost life; tests/test_envs.py plays it.
  assert env.life_loss_ends_step is True
  # atari_lib.py:359-364 (and :178-181 getScreenGrayscale): the palette greyscale, max, cv2.INTER_AREA.
  assert env.frame_processing == "greyscale_area"
  # atari_100k_runner.py:60 max_noops=30 (DrQ_eps.gin does not override it); atari_100k_runner.py:204-210 starts every
  # episode (atari_100k_runner.py:102, 248, 327) with randint(0, 30) = 0..29 env.step(0) calls, each a NOOP agent
  # step of frame_skip = 4 frames (atari_lib.py:305-313).
  assert (env.noop_min, env.noop_max, env.noop_frames_each) == (0, 29, FRAMES_PER_STEP)
  # atari_lib.py:134 max_num_frames_per_episode=100_000 (ale_py truncates the episode there, counting no-op frames
  # too; atari_lib.py:311-312 makes that a game over, and atari_100k_runner.py:285, 290 store it as a terminal).
  # That cap comes first: gin:43 Runner.max_steps_per_episode = 27,000 steps would be 108,000 frames.
  assert env.max_episode_frames == min(100_000, 27_000 * FRAMES_PER_STEP) == 100_000
  assert env.cap_is_terminal is True  # atari_lib.py:311-312 game_over = terminated or truncated

  # Network: atari_100k_rainbow_agent.py:142 networks.FullRainbowNetwork (networks.py:545-607).
  assert agent.torso == "nature"  # networks.py:573-585: 32x8x8/4, 64x4x4/2, 64x3x3/1 convs
  assert agent.conv_padding == "SAME"  # networks.py:579-584 nn.Conv without padding=: Flax's default 'SAME'
  assert agent.layer_norm is False  # networks.py:576-590: no normalisation
  assert agent.initializer == "xavier_uniform"  # networks.py:583, 540 kernel_init=nn.initializers.xavier_uniform(); Flax zero biases
  assert agent.dueling is True  # gin:23 JaxFullRainbowAgent.dueling = True (networks.py:592-597)
  assert agent.head_bias == "per_output"  # networks.py:539-540 nn.Dense: one bias per output
  assert agent.head == "scalar"  # gin:25 distributional = False, gin:26 num_atoms = 1 (networks.py:606-607)
  assert agent.random_shift_pad == 4  # gin:30 data_augmentation = True; atari_100k_rainbow_agent.py:107 img_pad=4
  assert agent.intensity_scale == 0.05  # atari_100k_rainbow_agent.py:99 _intensity_aug(key, x, scale=0.05)

  # Learning target and loss.
  assert agent.discount == 0.99  # gin:11 JaxDQNAgent.gamma = 0.99
  assert agent.n_step == 10  # gin:12 JaxDQNAgent.update_horizon = 10 (dqn_agent.py:365 cumulative_gamma = gamma^n)
  # run_experiment.py:193 Runner clip_rewards=True; atari_100k_runner.py:334-336 np.clip(rewards, -1, 1).
  assert agent.clip_rewards is True and agent.max_abs_reward == 1.0
  # atari_100k_rainbow_agent.py:140, 168 mse_loss=False -> full_rainbow_agent.py:169 losses.huber_loss,
  # whose delta defaults to 1.0 (losses.py:20-21); full_rainbow_agent.py:172 mean over the batch (weights 1, :194).
  assert agent.loss == "huber" and agent.huber_delta == 1.0
  assert agent.td_error_grad_clip is None  # full_rainbow_agent.py:149-173: no gradient clip
  assert agent.max_grad_norm is None and agent.weight_decay == 0.0  # dqn_agent.py:93 plain optax.adam
  assert agent.target_update_period_updates == 1  # gin:15 JaxDQNAgent.target_update_period = 1 (full_rainbow_agent.py:497-498)
  assert agent.batch_size == 32  # gin:49 ReplayBuffer.batch_size = 32

  # Optimizer: gin:20 optimizer='adam' -> full_rainbow_agent.py:347 create_optimizer -> dqn_agent.py:93 optax.adam.
  assert agent.optimizer == "adam"
  assert agent.resolved_learning_rate == 1e-4  # gin:33 create_optimizer.learning_rate = 0.0001
  assert agent.resolved_optimizer_eps == 1.5e-4  # gin:34 create_optimizer.eps = 0.00015 (betas: dqn_agent.py:57-58)

  # Exploration: gin:29 linearly_decaying_epsilon (dqn_agent.py:171-192), called with (epsilon_decay_period,
  # training_steps, min_replay_history, epsilon_train) (full_rainbow_agent.py:78-83).
  assert agent.epsilon_begin == 1.0  # dqn_agent.py:176 "Begin at 1."
  assert agent.epsilon_end == 0.01  # gin:17 JaxDQNAgent.epsilon_train = 0.01
  assert agent.epsilon_decay_begin_steps == 1_600  # gin:13 min_replay_history = 1_600, the warmup_steps argument
  assert agent.epsilon_decay_steps == 5_000  # gin:19 JaxDQNAgent.epsilon_decay_period = 5_000
  assert agent.eval_epsilon == 0.001  # gin:18 JaxDQNAgent.epsilon_eval = 0.001

  # Replay: full_rainbow_agent.py:351-367 replay_buffer.ReplayBuffer.
  assert replay.max_size == 1_000_000  # gin:48 ReplayBuffer.max_capacity = 1_000_000
  assert replay.min_replay_size == 1_600  # gin:13 min_replay_history = 1_600 (full_rainbow_agent.py:492 add_count > it)
  # gin:14 update_period = 1 and gin:27 num_updates_per_train_step = 1: one batch of 32 (gin:49) per agent step.
  assert replay.samples_per_insert == 32 * 1 / 1 == 32.0
  assert replay.prioritized is False  # gin:28 replay_scheme = 'uniform' (full_rainbow_agent.py:460-462 priority 1.0)

  # Budget and evaluation.
  assert run.total_env_steps == 10 * 10_000 == 100_000  # gin:40 num_iterations = 10 x gin:41 training_steps = 10_000
  assert run.eval_episodes == 100  # atari_100k_runner.py:59 num_eval_episodes=100 (gin:42 binds the same 100)
  assert run.num_actors == 1 and run.num_envs_per_actor == 1  # atari_100k_runner.py:63 num_train_envs=1
  # Not asserted: Dopamine also evaluates after each of the 10 iterations (atari_100k_runner.py:470-482); the
  # preset evaluates once, at the end, which is the score Atari 100k reports.


def _flat_params(params) -> dict[str, jnp.ndarray]:
  return {"/".join(path): value for path, value in traverse_util.flatten_dict(params["params"]).items()}


def _init(preset: str):
  network = PRESETS[preset].agent.make_network(NUM_ACTIONS)
  obs = np.random.default_rng(0).integers(0, 256, (2, 84, 84, 4)).astype(np.uint8)
  params = network.init(jax.random.PRNGKey(0), obs)
  return network, params, obs


def test_network_shapes_dqn_zoo_valid_shared_bias_atari100k_same_dueling():
  # DQN Zoo: VALID convs (networks.py:99) leave 7x7x64 = 3,136 features; dense 512 (networks.py:215); one bias
  # shared by every action (networks.py:120-134: hk.Linear(with_bias=False) + a [1] parameter broadcast).
  network, params, obs = _init("dqn_zoo")
  flat = _flat_params(params)
  assert flat["torso/dense0/kernel"].shape == (7 * 7 * 64, 512) == (3_136, 512)
  assert flat["head/kernel"].shape == (512, NUM_ACTIONS) and flat["head/bias"].shape == (1,)
  assert sorted(k for k in flat if k.startswith("head/")) == ["head/bias", "head/kernel"]
  features = network.apply(params, obs, method="features")
  q = network.apply(params, obs).q_values
  np.testing.assert_allclose(q - features @ flat["head/kernel"], np.broadcast_to(flat["head/bias"], q.shape), atol=1e-5)

  # Dopamine: SAME convs (networks.py:579-584, Flax default) leave ceil(84/4)=21 -> 11 -> 11: 11x11x64 = 7,744
  # features; dense 512 (networks.py:589); dueling value + advantage layers (networks.py:592-597).
  network, params, obs = _init("atari100k")
  flat = _flat_params(params)
  assert flat["torso/dense0/kernel"].shape == (11 * 11 * 64, 512) == (7_744, 512)
  head = {k: v.shape for k, v in flat.items() if k.startswith("head/")}
  assert head == {"head/advantage/kernel": (512, NUM_ACTIONS), "head/advantage/bias": (NUM_ACTIONS,),
                  "head/value/kernel": (512, 1), "head/value/bias": (1,)}
  features = network.apply(params, obs, method="features")
  advantage = features @ flat["head/advantage/kernel"] + flat["head/advantage/bias"]
  value = features @ flat["head/value/kernel"] + flat["head/value/bias"]
  q = network.apply(params, obs).q_values
  np.testing.assert_allclose(q, value + advantage - advantage.mean(-1, keepdims=True), atol=1e-5)  # networks.py:597


def _layer_fans(flat: dict[str, jnp.ndarray]) -> dict[str, tuple[int, int]]:
  """(fan_in, fan_out) of every conv and dense layer, from its kernel: receptive field x channels."""
  fans = {}
  for name, value in flat.items():
    if name.endswith("kernel"):
      receptive = math.prod(value.shape[:-2])
      fans[name.rsplit("/", 1)[0]] = (receptive * value.shape[-2], receptive * value.shape[-1])
  return fans


def _assert_fills_uniform(values: np.ndarray, bound: float, name: str):
  """Every value in [-bound, bound]; the largest |value| near the bound; the std near bound/sqrt(3)."""
  values = np.asarray(values).ravel()
  n = values.size
  assert np.abs(values).max() <= np.float32(bound), name  # the bound as the float32 the initializer draws against
  if n > 1:
    # P(max |u| < bound (1 - 8/n)) = (1 - 8/n)^n < e^-8 for U(-bound, bound).
    assert np.abs(values).max() >= bound * (1 - 8 / n), name
    # The sample std of n uniforms has relative standard error sqrt(0.2 / n); allow 5 of them.
    assert np.std(values) == pytest.approx(bound / math.sqrt(3), rel=max(0.01, 5 * math.sqrt(0.2 / n))), name


def test_dqn_zoo_init_is_uniform_over_plus_minus_one_over_sqrt_fan_in():
  # networks.py:58-79: every weight and bias U(-c, c), c = 1/sqrt(num_input_units); num_input_units is
  # in_channels * kernel_h * kernel_w for a conv (networks.py:91), the input size for a linear (networks.py:111,
  # and networks.py:125 for the shared bias of the output layer, networks.py:130).
  _, params, _ = _init("dqn_zoo")
  flat = _flat_params(params)
  fans = _layer_fans(flat)
  assert sorted(fans) == ["head", "torso/conv0", "torso/conv1", "torso/conv2", "torso/dense0"]
  assert {layer: fan_in for layer, (fan_in, _) in fans.items()} == {
      "torso/conv0": 4 * 8 * 8, "torso/conv1": 32 * 4 * 4, "torso/conv2": 64 * 3 * 3, "torso/dense0": 3_136, "head": 512}
  for name, value in flat.items():
    layer = name.rsplit("/", 1)[0]
    _assert_fills_uniform(value, 1 / math.sqrt(fans[layer][0]), name)


def test_atari100k_init_is_xavier_uniform_kernels_and_zero_biases():
  # networks.py:583, 540 nn.initializers.xavier_uniform(): U(-l, l), l = sqrt(6 / (fan_in + fan_out)), both fans
  # including the receptive field; biases are nn.Conv/nn.Dense's default zeros.
  _, params, _ = _init("atari100k")
  flat = _flat_params(params)
  fans = _layer_fans(flat)
  assert sorted(fans) == ["head/advantage", "head/value", "torso/conv0", "torso/conv1", "torso/conv2", "torso/dense0"]
  for name, value in flat.items():
    layer, kind = name.rsplit("/", 1)
    if kind == "kernel":
      fan_in, fan_out = fans[layer]
      _assert_fills_uniform(value, math.sqrt(6 / (fan_in + fan_out)), name)
    else:
      assert kind == "bias" and not np.any(np.asarray(value)), name


def dopamine_linearly_decaying_epsilon(decay_period, step, warmup_steps, epsilon):
  """dqn_agent.py:171-192, transcribed with numpy."""
  steps_left = decay_period + warmup_steps - step
  bonus = (1.0 - epsilon) * steps_left / decay_period
  bonus = np.clip(bonus, 0.0, 1.0 - epsilon)
  return epsilon + bonus


class DqnZooLinearSchedule:
  """parts.py:414-430 LinearSchedule, transcribed."""

  def __init__(self, begin_value, end_value, begin_t, decay_steps):
    self._decay_steps, self._begin_t = decay_steps, begin_t
    self._begin_value, self._end_value = begin_value, end_value

  def __call__(self, t):
    frac = min(max(t - self._begin_t, 0), self._decay_steps) / self._decay_steps
    return (1 - frac) * self._begin_value + frac * self._end_value


def test_epsilon_schedules_equal_the_sources_formulas():
  # Dopamine: epsilon_fn(epsilon_decay_period=5_000 (gin:19), training_steps, min_replay_history=1_600 (gin:13),
  # epsilon_train=0.01 (gin:17)), full_rainbow_agent.py:78-83; both count agent steps. (Dopamine acts after
  # _train_step has counted the step, atari_100k_rainbow_agent.py:254-268 and full_rainbow_agent.py:500, so its
  # k-th action uses step k + 1: a shift of 0.99/5000 in epsilon that this test leaves out, comparing the functions.)
  schedule = epsilon_schedule(PRESETS["atari100k"].agent)
  steps = np.concatenate([np.arange(0, 8_000), [10_000, 50_000, 100_000]]).astype(np.int32)
  expected = dopamine_linearly_decaying_epsilon(5_000, steps.astype(np.float64), 1_600, 0.01)
  np.testing.assert_allclose(np.asarray(schedule(jnp.asarray(steps))), expected, rtol=0, atol=1e-6)
  assert float(schedule(1_600)) == 1.0 and float(schedule(6_600)) == pytest.approx(0.01)

  # DQN Zoo: LinearSchedule(begin_t=int(0.05 * 1e6 * 4), decay_steps=int(0.02 * 200 * 1e6), 1.0 -> 0.01)
  # (run_atari.py:171-184) evaluated at the agent's frame count (agent.py:212), 4 frames per agent step.
  dqn_zoo = DqnZooLinearSchedule(1.0, 0.01, begin_t=int(0.05 * int(1e6) * 4), decay_steps=int(0.02 * 200 * int(1e6)))
  schedule = epsilon_schedule(PRESETS["dqn_zoo"].agent)
  steps = np.concatenate([np.arange(0, 1_200_000, 997), [49_999, 50_000, 50_001, 1_049_999, 1_050_000, 5_000_000]])
  expected = np.array([dqn_zoo(FRAMES_PER_STEP * int(s)) for s in steps])
  np.testing.assert_allclose(np.asarray(schedule(jnp.asarray(steps, jnp.int32))), expected, rtol=0, atol=1e-6)
  # lyle2023 explores exactly as dqn_zoo.
  np.testing.assert_array_equal(epsilon_schedule(PRESETS["lyle2023"].agent)(jnp.asarray(steps, jnp.int32)),
                                schedule(jnp.asarray(steps, jnp.int32)))


@pytest.mark.parametrize("preset, source_optimizer", [
    # run_atari.py:216-221
    ("dqn_zoo", lambda: optax.rmsprop(learning_rate=0.00025, decay=0.95, eps=0.01 / 32**2, centered=True)),
    # dqn_agent.py:93 with gin:33-34 and dqn_agent.py:57-58 betas
    ("atari100k", lambda: optax.adam(0.0001, b1=0.9, b2=0.999, eps=0.00015)),
])
def test_optimizers_equal_the_sources_optax_calls(preset, source_optimizer):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  ours, theirs = make_optimizer(PRESETS[preset].agent), source_optimizer()
  state_ours, state_theirs = ours.init(params), theirs.init(params)
  for _ in range(5):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-2, jnp.float32), params)
    update_ours, state_ours = ours.update(grads, state_ours, params)
    update_theirs, state_theirs = theirs.update(grads, state_theirs, params)
    for a, b in zip(jax.tree.leaves(update_ours), jax.tree.leaves(update_theirs)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    params = optax.apply_updates(params, update_ours)


# A citation of a source at a commit, as the code and the docs write them: "github.com/google/dopamine at 5873f54",
# "DQN Zoo at 45061f4bbbcf...", "(github.com/google-deepmind/dqn_zoo); ... at", in any case.
# (A commit has a letter: "at 1600000" is a number.)
CITATION = re.compile(r"(dqn[_ ]zoo|dopamine)[^\n]{0,40}? at ((?=[0-9]*[a-f])[0-9a-f]{7,40})\b", re.IGNORECASE)


def test_every_citation_of_a_source_names_its_one_commit():
  """Every "<DQN Zoo or Dopamine> at <commit>" in the project's code, tests and docs is a prefix of the source's
  commit in SOURCE_COMMITS; a citation at another commit (DQN Zoo's f87bb1f, say, where run_atari.py's lines are
  others) fails here."""
  commits = {"dqn_zoo": SOURCE_COMMITS["github.com/google-deepmind/dqn_zoo"],
             "dopamine": SOURCE_COMMITS["github.com/google/dopamine"]}
  found, wrong = collections.Counter(), []
  for folder, dirs, files in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "__pycache__")]
    for name in files:
      if not name.endswith((".py", ".md", ".gin", ".toml", ".cfg")):
        continue
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
      for match in CITATION.finditer(text):
        source = "dopamine" if match.group(1).lower() == "dopamine" else "dqn_zoo"
        found[source] += 1
        if not commits[source].startswith(match.group(2)):
          wrong.append(f"{os.path.relpath(path, ROOT)}: {match.group(0)!r}")
  assert not wrong, wrong
  assert found["dqn_zoo"] >= 5 and found["dopamine"] >= 5, found  # it reads the citations there are
