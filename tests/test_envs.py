"""Integration tests on real ALE games through `envs.AtariEnv`."""

import dataclasses

import numpy as np
import pytest

from envs import PROTOCOLS, AtariEnv, AtariProtocol, UnknownGameError, check_game


def run_random(env, steps, seed=0):
  rng = np.random.default_rng(seed)
  obs = env.reset()
  history = [obs]
  results = []
  for _ in range(steps):
    step = env.step(rng.integers(0, env.num_actions, env.num_envs))
    history.append(step.obs)
    results.append(step)
  return history, results


def test_observations_are_channels_last_uint8_with_newest_frame_last():
  with AtariEnv("pong", 2, seed=1) as env:
    assert env.num_actions == 6  # Pong's minimal action set
    history, results = run_random(env, 40)
  for obs in history:
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8 and obs.flags["C_CONTIGUOUS"]
  # After a reset only the newest frame is filled in.
  assert history[0][..., 3].any() and not history[0][..., :3].any()
  for before, after in zip(history[10:-1], history[11:]):
    np.testing.assert_array_equal(after[..., :3], before[..., 1:])


def _diverged(protocol):
  """Four copies (seeds 0..3) of Pong fed the same actions: do their screens differ?"""
  with AtariEnv("pong", 4, protocol, seed=0) as env:
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(300):
      obs = env.step(np.full(4, rng.integers(0, env.num_actions))).obs
      if any(not np.array_equal(obs[0], obs[i]) for i in range(1, 4)):
        return True
  return False


def test_sticky_actions_are_on_by_default_and_are_what_makes_play_stochastic():
  assert AtariProtocol().sticky_action_prob == 0.25
  assert _diverged(AtariProtocol())
  assert not _diverged(AtariProtocol(sticky_action_prob=0.0))


def test_random_ms_pacman_episodes_score_real_unclipped_points_and_end_in_a_terminal():
  with AtariEnv("ms_pacman", 4, seed=0) as env:
    env.reset()
    rng = np.random.default_rng(0)
    episodes, steps = [], 0
    while len(episodes) < 4:
      step = env.step(rng.integers(0, env.num_actions, 4))
      steps += 1
      episodes += step.episodes
      assert (step.discount[step.terminated] == 0.0).all()
      assert (step.discount[~step.terminated] == 1.0).all()  # life losses do not cut bootstrapping by default
      assert not step.truncated.any()
      # Rewards are real game points (pellets 10, power pills 50, ...), not clipped to 1.
      assert set(np.unique(step.reward)) <= {0.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 500.0, 700.0, 1000.0, 2000.0, 5000.0}
  for episode in episodes:
    assert not episode.truncated
    assert episode.episode_return > 10 and episode.episode_return % 10 == 0
    assert 0 < episode.length_steps <= steps


def test_frame_cap_truncates_without_a_terminal_and_hands_back_the_final_observation():
  protocol = AtariProtocol(max_episode_frames=400)
  with AtariEnv("pong", 2, protocol, seed=0) as env:
    history, results = run_random(env, 101)
  ends = [t for t, r in enumerate(results) if r.episodes]
  assert ends == [99]  # 400 frames / 4 frames per step
  end = results[99]
  assert end.truncated.all() and not end.terminated.any()
  assert (end.discount == 1.0).all()  # truncation is not a terminal: bootstrap through it
  assert [e.length_steps for e in end.episodes] == [100, 100]
  assert all(e.truncated for e in end.episodes)
  # obs is already the next episode's first observation; final_obs continues the old one.
  assert not end.obs[..., :3].any()
  np.testing.assert_array_equal(end.final_obs[..., :3], history[99][..., 1:])


def test_dqn_zoo_protocol_cuts_bootstrapping_at_a_life_loss_but_not_the_game():
  protocol = dataclasses.replace(PROTOCOLS["dqn_zoo"], noop_max=0)
  with AtariEnv("ms_pacman", 2, protocol, seed=0) as env:
    _, results = run_random(env, 400)
  life_losses = [r for r in results if r.life_lost.any()]
  assert life_losses, "a random Ms. Pac-Man loses a life within 400 steps"
  for r in life_losses:
    assert (r.discount[r.life_lost] == 0.0).all()
    assert not r.terminated[r.life_lost].any()


def test_unknown_game_fails_at_once_with_close_matches():
  with pytest.raises(UnknownGameError, match="did you mean .*space_invaders"):
    AtariEnv("spaceinvaders", 1)
  with pytest.raises(UnknownGameError, match="ms_pacman"):
    check_game("MsPacman")
  assert check_game("pong") == "pong"
