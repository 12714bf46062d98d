"""Integration tests on real ALE games through `envs.AtariEnv`."""

import collections
import dataclasses

import numpy as np
import pytest
from scipy import stats

from common.validation import ConfigError
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
  protocol = dataclasses.replace(PROTOCOLS["dqn_zoo"], noop_min=0, noop_max=0)
  with AtariEnv("ms_pacman", 2, protocol, seed=0) as env:
    _, results = run_random(env, 400)
  life_losses = [r for r in results if r.life_lost.any()]
  assert life_losses, "a random Ms. Pac-Man loses a life within 400 steps"
  for r in life_losses:
    assert (r.discount[r.life_lost] == 0.0).all()
    assert not r.terminated[r.life_lost].any()


def _frames_after_noops(game, num_frames):
  """Newest 84x84 frame and score after n = 0..num_frames raw NOOP frames from a reset, n -> (frame, score).

  Played one frame per step on a plain ale_py vector env without no-op starts (none of the code under test),
  un-pooled: at a reset ale_py max-pools the screen with a zero frame, so a start's frame is this one.
  """
  from ale_py.vector_env import AtariVectorEnv

  env = AtariVectorEnv(game, 1, num_threads=1, frameskip=1, maxpool=False, stack_num=1, noop_max=0,
                       use_fire_reset=False, reward_clipping=False, repeat_action_probability=0.0)
  obs, _ = env.reset(seed=0)
  frames, scores = [obs[0, 0].copy()], [0.0]
  for _ in range(num_frames):
    obs, reward, *_ = env.step(np.zeros(1, np.int32))  # action 0 is NOOP in every minimal action set
    frames.append(obs[0, 0].copy())
    scores.append(scores[-1] + float(reward[0]))
  env.close()
  return frames, scores


def _noop_count_of(frames, newest_frame):
  """How many no-op frames a start had, read off its screen (the frames must differ from one another)."""
  matches = [n for n, frame in enumerate(frames) if np.array_equal(frame, newest_frame)]
  assert len(matches) == 1, f"start screen matches no-op counts {matches}"
  return matches[0]


def test_dqn_zoo_episodes_start_with_1_to_30_raw_noop_frames_uniformly():
  # DQN Zoo: gym_atari.RandomNoopsEnvironmentWrapper(min_noop_steps=1, max_noop_steps=30) on the
  # frame-level env, randint(1, 30 + 1) raw frames. Freeway's cars move every frame, so its first 41
  # screens are all distinct and a start's screen tells how many no-op frames came before it.
  frames, _ = _frames_after_noops("freeway", 40)
  assert len({f.tobytes() for f in frames}) == len(frames)
  # A 4-frame cap ends every episode after one step, so each step starts every game anew.
  # ale_py's frame processing, as the reference frames are made (DQN Zoo's is tests/test_frames.py's).
  protocol = dataclasses.replace(PROTOCOLS["dqn_zoo"], max_episode_frames=4, frame_processing="greyscale_area")
  counts = []
  with AtariEnv("freeway", 8, protocol, seed=0, num_threads=1) as env:
    starts = [env.reset()]
    for _ in range(40):
      step = env.step(np.zeros(8, np.int32))
      assert step.truncated.all()
      starts.append(step.obs)
  for obs in starts:
    assert not obs[..., :-1].any()  # a start's stack holds only its first frame
    counts += [_noop_count_of(frames, o[..., -1]) for o in obs]
  assert len(counts) == 328
  histogram = collections.Counter(counts)
  assert min(counts) == 1 and max(counts) == 30
  assert sorted(histogram) == list(range(1, 31))
  assert stats.chisquare([histogram[n] for n in range(1, 31)]).pvalue > 1e-3


def test_atari100k_episodes_start_with_0_to_29_noop_agent_steps_uniformly():
  # Dopamine's DataEfficientAtariRunner._initialize_episode (atari_100k_runner.py:203-213, max_noops=30):
  # randint(0, 30) steps of NOOP on the 4-frame-skip env, i.e. 0, 4, ..., 116 raw NOOP frames.
  frames, _ = _frames_after_noops("freeway", 116)
  assert len({f.tobytes() for f in frames}) == len(frames)  # every start screen tells its no-op count
  # ale_py's C++ environment, which made the reference frames (Freeway loses no life: the stop at one is moot)
  protocol = dataclasses.replace(PROTOCOLS["atari100k"], max_episode_frames=4, life_loss_ends_step=False)
  counts = []
  with AtariEnv("freeway", 8, protocol, seed=0, num_threads=1) as env:
    starts = [env.reset()] + [env.step(np.zeros(8, np.int32)).obs for _ in range(40)]
  for obs in starts:
    counts += [_noop_count_of(frames, o[..., -1]) for o in obs]
  assert all(n % 4 == 0 for n in counts)
  histogram = collections.Counter(n // 4 for n in counts)
  assert sorted(histogram) == list(range(0, 30))
  assert stats.chisquare([histogram[n] for n in range(30)]).pvalue > 1e-3


def test_no_op_frames_score_in_the_episode_return_but_in_no_step_reward():
  # Skiing's clock runs from the first frame (about -5 points per 3 frames), so its no-op frames score.
  frames, scores = _frames_after_noops("skiing", 40)
  # 2-step episodes of NOOPs, frames made as the reference's are
  protocol = dataclasses.replace(PROTOCOLS["dqn_zoo"], max_episode_frames=8, frame_processing="greyscale_area")
  with AtariEnv("skiing", 4, protocol, seed=0, num_threads=1) as env:
    obs = env.reset()
    noops = [_noop_count_of(frames[1:], o[..., -1]) + 1 for o in obs]  # skiing's frames 0 and 1 are alike
    step_rewards = np.zeros(4)
    episodes = []
    for _ in range(2):
      step = env.step(np.zeros(4, np.int32))
      step_rewards += step.reward
      episodes += step.episodes
  assert [e.env_index for e in episodes] == [0, 1, 2, 3] and all(e.length_steps == 2 for e in episodes)
  for e in episodes:
    n = noops[e.env_index]
    assert scores[n] < 0
    assert step_rewards[e.env_index] == scores[n + 8] - scores[n]  # the agent's steps score only their frames
    assert e.episode_return == scores[n + 8]  # the episode's score is the game's, from its first frame


def test_no_op_range_is_validated():
  assert (PROTOCOLS["dqn_zoo"].noop_min, PROTOCOLS["dqn_zoo"].noop_max, PROTOCOLS["dqn_zoo"].noop_frames_each) == (1, 30, 1)
  assert (PROTOCOLS["machado2018"].noop_min, PROTOCOLS["machado2018"].noop_max) == (0, 0)
  # Dopamine's DataEfficientAtariRunner: randint(0, 30) no-op agent steps (atari_100k_runner.py:203-213).
  assert (PROTOCOLS["atari100k"].noop_min, PROTOCOLS["atari100k"].noop_max, PROTOCOLS["atari100k"].noop_frames_each) == (0, 29, 4)
  with pytest.raises(ConfigError, match="^noop_frames_each=0"):
    AtariProtocol(noop_frames_each=0)
  with pytest.raises(ConfigError, match=r"^noop_max=0 is outside the allowed range \[1, inf\)"):
    dataclasses.replace(PROTOCOLS["dqn_zoo"], noop_max=0)
  with pytest.raises(ConfigError, match="^noop_min=-1"):
    AtariProtocol(noop_min=-1)
  with pytest.raises(ConfigError, match="^fire_reset=True with no-op starts"):
    AtariProtocol(noop_max=30, fire_reset=True)


def test_atari100k_restarts_the_frame_stack_at_each_life_loss_as_dopamine_does():
  with_reset = PROTOCOLS["atari100k"]
  assert with_reset.reset_stack_on_life_loss and with_reset.sticky_action_prob == 0.0
  without = dataclasses.replace(with_reset, reset_stack_on_life_loss=False)
  rng = np.random.default_rng(0)
  with AtariEnv("breakout", 2, with_reset, seed=0, num_threads=1) as env, \
       AtariEnv("breakout", 2, without, seed=0, num_threads=1) as ref:
    np.testing.assert_array_equal(env.reset(), ref.reset())
    since_loss = [None, None]  # per game: newest frames since its last life loss, while fewer than 4
    life_losses, games_over, checked_next = 0, 0, 0
    for _ in range(300):
      actions = rng.integers(0, env.num_actions, 2)
      step, ref_step = env.step(actions), ref.step(actions)
      np.testing.assert_array_equal(step.reward, ref_step.reward)  # the same games, in lockstep
      np.testing.assert_array_equal(step.life_lost, ref_step.life_lost)
      np.testing.assert_array_equal(step.stack_reset, step.life_lost)
      assert not ref_step.stack_reset.any()
      games_over += len(step.episodes)
      for i in range(2):
        if step.life_lost[i]:
          life_losses += 1
          assert not step.obs[i, ..., :3].any()
          np.testing.assert_array_equal(step.obs[i, ..., 3], ref_step.obs[i, ..., 3])
          since_loss[i] = [step.obs[i, ..., 3]]
        elif since_loss[i] is not None and not (step.terminated[i] or step.truncated[i]):
          f1, f2 = since_loss[i][0], ref_step.obs[i, ..., 3]
          if len(since_loss[i]) == 1:  # the step after the loss: [0, 0, f1, f2]
            checked_next += 1
            expected = np.stack([np.zeros_like(f1), np.zeros_like(f1), f1, f2], axis=-1)
            np.testing.assert_array_equal(step.obs[i], expected)
          since_loss[i].append(f2)
          newest = since_loss[i][-4:]
          expected = np.stack([np.zeros_like(f1)] * (4 - len(newest)) + newest, axis=-1)
          np.testing.assert_array_equal(step.obs[i], expected)
          if len(since_loss[i]) == 4:  # from here on ale_py's stack holds only frames after the loss
            np.testing.assert_array_equal(step.obs[i], ref_step.obs[i])
            since_loss[i] = None
        else:  # no life loss lately, or the game ended (its final stack is checked in the scripted test below)
          since_loss[i] = None
          np.testing.assert_array_equal(step.obs[i], ref_step.obs[i])
  assert life_losses >= 6 and checked_next >= 6 and games_over >= 2


class _ScriptedGame:
  """Stands in for one ale_py game: frame t is all t; a life is lost at step 2 and the game ends at step 4.

  Its frame stack runs on through the life loss as ale_py's does; a reset starts it from zeros, frame 100.
  """

  num_envs = 1
  noop_reward = np.zeros(1)

  def __init__(self, *args, **kwargs):
    self.single_action_space = type("Space", (), {"n": 2})()
    self._t = 0

  def _obs(self):
    return np.stack([np.full((8, 8), f, np.uint8) for f in self._frames[-4:]])[None]  # [1, stack, H, W]

  def reset(self, *, seed=None):
    self._frames = [0, 0, 0, 100]
    return self._obs(), {"lives": np.array([3])}

  def step(self, actions):
    self._t += 1
    self._frames.append(self._t)
    lives, over = (2 if 2 <= self._t < 4 else 3), self._t == 4
    info = {"lives": np.array([lives])}
    if over:
      info["final_obs"] = self._obs()
      obs, info["lives"] = self.reset()[0], np.array([3])
    else:
      obs = self._obs()
    return obs, np.zeros(1), np.array([over]), np.array([False]), info

  def close(self):
    pass


def test_a_game_over_within_three_steps_of_a_life_loss_ends_on_the_restarted_stack(monkeypatch):
  import envs.atari

  monkeypatch.setattr(envs.atari, "ale_vector_env", _ScriptedGame)
  protocol = dataclasses.replace(PROTOCOLS["atari100k"], obs_size=8)
  with AtariEnv("breakout", 1, protocol) as env:
    env.reset()
    steps = [env.step(np.zeros(1, np.int32)) for _ in range(5)]
  stacks = [s.obs[0, 0, 0].tolist() for s in steps]
  assert [s.stack_reset[0] for s in steps] == [False, True, False, False, False]
  assert stacks[:3] == [[0, 0, 100, 1], [0, 0, 0, 2], [0, 0, 2, 3]]
  assert steps[3].terminated[0] and steps[3].final_obs[0, 0, 0].tolist() == [0, 2, 3, 4]  # ale_py's is [1, 2, 3, 4]
  assert stacks[3:] == [[0, 0, 0, 100], [0, 0, 100, 5]]  # a new game: nothing left to hide


def test_stack_reset_on_life_loss_needs_terminal_on_life_loss():
  with pytest.raises(ConfigError, match="^reset_stack_on_life_loss=True needs terminal_on_life_loss=True"):
    AtariProtocol(reset_stack_on_life_loss=True)
  assert AtariProtocol(reset_stack_on_life_loss=True, terminal_on_life_loss=True).reset_stack_on_life_loss


def test_unknown_game_fails_at_once_with_close_matches():
  with pytest.raises(UnknownGameError, match="did you mean .*space_invaders"):
    AtariEnv("spaceinvaders", 1)
  with pytest.raises(UnknownGameError, match="ms_pacman"):
    check_game("MsPacman")
  assert check_game("pong") == "pong"


@pytest.mark.parametrize("cap_is_terminal", [False, True])
def test_the_frame_cap_truncates_or_with_cap_is_terminal_ends_in_a_terminal(cap_is_terminal):
  protocol = AtariProtocol(sticky_action_prob=0.0, max_episode_frames=8, cap_is_terminal=cap_is_terminal)
  with AtariEnv("pong", 2, protocol, seed=0, num_threads=1) as env:
    env.reset()
    first = env.step(np.zeros(2, np.int32))
    second = env.step(np.zeros(2, np.int32))
  assert not (first.terminated.any() or first.truncated.any())
  assert second.terminated.all() == cap_is_terminal and second.truncated.all() == (not cap_is_terminal)
  assert (second.discount == (0.0 if cap_is_terminal else 1.0)).all()
  assert [e.truncated for e in second.episodes] == [not cap_is_terminal] * 2


class _DopaminePreprocessing:
  """Dopamine's AtariPreprocessing.step with terminal_on_life_loss, written again from its source
  (github.com/google/dopamine at 5873f54, dopamine/discrete_domains/atari_lib.py:253-264, :305-331) on a bare
  ALEInterface: frames one at a time, frame t >= 2 of a step kept in buffer t - 2, and the step ended at a game
  over or a lost life after that; the observation is the max of the two buffers (native size, unresized)."""

  def __init__(self, game: str, seed: int):
    import ale_py
    from ale_py import roms

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    self.ale = ale_py.ALEInterface()
    self.ale.setInt("random_seed", seed)
    self.ale.setFloat("repeat_action_probability", 0.0)
    self.ale.loadROM(roms.get_rom_path(game))
    self.actions = self.ale.getMinimalActionSet()
    self.ale.reset_game()
    self.lives = self.ale.lives()
    self.screen_buffer = [self.ale.getScreenGrayscale(), np.zeros((210, 160), np.uint8)]

  def step(self, action: int):
    """(observation, reward, frames emulated, the frame of the step a life was lost at or None, game over)."""
    reward, lost_at = 0, None
    for time_step in range(4):
      reward += self.ale.act(self.actions[action])
      game_over = self.ale.game_over()
      new_lives = self.ale.lives()
      is_terminal = game_over or new_lives < self.lives
      lost_at = time_step if new_lives < self.lives else lost_at
      self.lives = new_lives
      if time_step >= 2:
        self.screen_buffer[time_step - 2] = self.ale.getScreenGrayscale()
      if is_terminal:
        break
    return np.maximum(*self.screen_buffer), reward, time_step + 1, lost_at, game_over


@pytest.mark.parametrize("game,seed", [("breakout", 1), ("asterix", 0)])
def test_atari100k_ends_a_step_at_the_frame_that_loses_a_life_as_dopamine_does(game, seed):
  from envs.atari import ale_vector_env

  # Random play from these seeds loses lives at frame 2 and frame 0 of a step (Breakout) and at frames 2 and 1
  # (Asterix), then the game ends; no no-op starts, so the reference plays the same emulator frames.
  protocol = dataclasses.replace(PROTOCOLS["atari100k"], noop_max=0)
  assert protocol.life_loss_ends_step
  env = ale_vector_env(game, 1, protocol, num_threads=1, height=210, width=160, grayscale=True, stack_num=1)
  env.reset(seed=seed)
  reference = _DopaminePreprocessing(game, seed)
  rng = np.random.default_rng(seed)
  lost_at, frame_number = [], 0
  for step in range(1_000):
    action = int(rng.integers(0, env.single_action_space.n))
    obs, reward, terminated, _, info = env.step(np.array([action], np.int32))
    expected, expected_reward, frames, lost, game_over = reference.step(action)
    if game_over:
      assert terminated[0]
      break
    frame_number += frames
    assert np.array_equal(obs[0, 0], expected), f"step {step} (lives lost at frames {lost_at}): another frame"
    assert reward[0] == expected_reward and info["frame_number"][0] == frame_number
    assert info["lives"][0] == reference.lives
    lost_at += [lost] if lost is not None else []
  env.close()
  assert {0, 1, 2} & set(lost_at) and 2 in lost_at  # lives lost in the middle of a step, one at its third frame
