"""Games in an ALE mode or difficulty (envs/mode_env.py): the Python loop plays the default game exactly as
ale_py's C++ vector env does, a mode reaches the emulator, and a wrong mode or difficulty is one clear error."""

import dataclasses

import numpy as np
import pytest

from envs import AtariEnv, AtariProtocol, UnknownGameError, check_game, parse_game
from envs.atari import ale_vector_env
from envs.mode_env import ModeVectorEnv, area_resize_matrix
from training.config import PRESETS


def _settings(**changes) -> dict:
  settings = dict(max_num_frames_per_episode=600, repeat_action_probability=0.25, full_action_space=False,
                  img_height=84, img_width=84, grayscale=True, stack_num=4, frameskip=4, maxpool=True, noop_max=0,
                  use_fire_reset=False)
  return {**settings, **changes}


@pytest.mark.parametrize("game,grayscale,steps", [("breakout", True, 300), ("space_invaders", False, 100)])
def test_the_python_loop_plays_the_default_game_as_ale_py_vector_env_does(game, grayscale, steps):
  from ale_py.vector_env import AtariVectorEnv

  # Sticky actions on, a frame cap of a third of the steps: episodes end and reset.
  settings = _settings(grayscale=grayscale, max_num_frames_per_episode=4 * steps // 3)
  reference = AtariVectorEnv(game, 3, num_threads=1, autoreset_mode="SameStep", episodic_life=False,
                             life_loss_info=False, reward_clipping=False, **settings)
  ours = ModeVectorEnv(game, 3, mode=0, difficulty=0, **settings)
  expected, got = reference.reset(seed=5), ours.reset(seed=5)
  off_by_one, ends = [np.abs(expected[0].astype(int) - got[0].astype(int)).mean()], 0
  assert np.abs(expected[0].astype(int) - got[0].astype(int)).max() <= 1
  rng = np.random.default_rng(0)
  for _ in range(steps):
    actions = rng.integers(0, reference.single_action_space.n, 3).astype(np.int32)
    expected, got = reference.step(actions), ours.step(actions)
    for name, a, b in zip(("reward", "terminated", "truncated"), expected[1:4], got[1:4]):
      assert np.array_equal(a, b), name  # the sticky-action draws, scores and ends are ALE's own, exactly
    for key in ("lives", "frame_number", "episode_frame_number"):
      assert np.array_equal(expected[4][key], got[4][key]), key
    done = expected[2] | expected[3]
    ends += int(done.sum())
    pairs = [(expected[0], got[0])] + ([(expected[4]["final_obs"][done], got[4]["final_obs"][done])] if done.any()
                                       else [])
    for a, b in pairs:
      difference = np.abs(a.astype(int) - b.astype(int))
      assert difference.max() <= 1  # OpenCV's INTER_AREA rounds in float32, ours in float64
      off_by_one.append(difference.mean())
  assert ends >= 3 and np.mean(off_by_one) < 1e-3


def test_area_resize_averages_the_covered_source_cells():
  assert np.allclose(area_resize_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
  # 5 -> 2: each output cell covers 2.5 source cells, the middle one shared half and half.
  assert np.allclose(area_resize_matrix(5, 2), [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]])
  assert np.allclose(area_resize_matrix(210, 84).sum(axis=1), 1.0)


def _native_screens(game: str, steps: int) -> list[np.ndarray]:
  """Newest native-size grayscale frame after each of `steps` NOOP agent steps, through `ale_vector_env`."""
  protocol = AtariProtocol(sticky_action_prob=0.0, max_pool=False, stack_frames=1)
  env = ale_vector_env(game, 1, protocol, num_threads=1, height=210, width=160, grayscale=True, stack_num=1)
  env.reset(seed=0)
  screens = [env.step(np.zeros(1, np.int32))[0][0, -1].copy() for _ in range(steps)]
  env.close()
  return screens


def test_a_mode_and_a_difficulty_reach_the_emulator():
  import ale_py
  from ale_py import roms

  # Independent reference: a bare ALEInterface set to Freeway's mode 1 at difficulty 1, four NOOP frames a step.
  ale = ale_py.ALEInterface()
  ale.setFloat("repeat_action_probability", 0.0)
  ale.loadROM(roms.get_rom_path("freeway"))
  ale.setMode(1)
  ale.setDifficulty(1)
  ale.reset_game()
  expected = []
  for _ in range(60):
    for _ in range(4):
      ale.act(ale_py.Action.NOOP)
    expected.append(ale.getScreenGrayscale())
  ours = _native_screens("freeway:m1:d1", 60)
  assert all(np.array_equal(a, b) for a, b in zip(expected, ours))
  default = _native_screens("freeway", 60)
  assert not all(np.array_equal(a, b) for a, b in zip(default, ours))  # mode 1 is another game (cars' speeds)


def test_a_game_id_with_a_mode_plays_through_atari_env_with_no_op_starts():
  protocol = dataclasses.replace(PRESETS["dqn_zoo"].env, max_episode_frames=40)
  with AtariEnv("breakout:m4", 2, protocol, seed=0, num_threads=1) as env:
    obs = env.reset()
    assert obs.shape == (2, 84, 84, 4) and env.num_actions == 4
    episodes = []
    for _ in range(25):
      episodes += env.step(np.ones(2, np.int32)).episodes
  assert len(episodes) >= 2 and all(e.length_steps == 10 for e in episodes)


def test_a_wrong_mode_difficulty_or_game_id_is_one_clear_error():
  assert parse_game("breakout:m4:d1") == ("breakout", 4, 1) and parse_game("pong:d2") == ("pong", None, 2)
  assert check_game("breakout:m4:d1") == "breakout:m4:d1" and parse_game("pong").default_variant
  with pytest.raises(UnknownGameError, match=r"unknown mode 5 of breakout in 'breakout:m5': its mode values are "
                                             r"0, 4, 8, .*, 44$"):
    check_game("breakout:m5")
  with pytest.raises(UnknownGameError, match="unknown difficulty 9 of pong .* values are 0, 1, 2, 3$"):
    check_game("pong:d9")
  for bad in ("pong:x1", "pong:m", "pong:m1:m2", "pong:m-1"):
    with pytest.raises(UnknownGameError, match="bad game id .*ROM\\[:m<mode>\\]\\[:d<difficulty>\\]"):
      check_game(bad)
  with pytest.raises(UnknownGameError, match="unknown game 'pongg'"):
    check_game("pongg:m1")


def test_a_schedule_of_one_games_difficulties_keeps_its_minimal_action_set():
  smoke = PRESETS["smoke"]
  config = dataclasses.replace(smoke, tasks=("pong:d0", "pong:d1"), task_switch_every_env_steps=100)
  assert config.game == "pong:d0" and not config.env.full_action_space
  with pytest.raises(UnknownGameError, match="unknown difficulty 7 of pong"):
    dataclasses.replace(smoke, tasks=("pong", "pong:d7"), task_switch_every_env_steps=100)
