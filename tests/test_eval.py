"""eval.py and training/video.py on the checkpoints of a real smoke run (Breakout, MLP torso, real ALE)."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest

import eval as eval_cli
from common.checkpoints import CheckpointStore
from envs.scores import human_normalized_score, reference_scores
from training.config import load_config
from training.evaluation import evaluate, evaluate_for_frames
from training.saved_run import open_run
from training.video import LockstepError, Mp4Writer, ScreenFollower, evaluate_and_record
from tests.conftest import ROOT, tree_digest

# The tests start ffmpeg and eval.py with subprocess (fork + exec) after JAX has started its threads.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def checkpoint_steps(run_dir: str) -> list[int]:
  with CheckpointStore(os.path.join(run_dir, "checkpoints"), read_only=True) as store:
    return store.steps()


def read_video(path: str) -> tuple[dict, list[np.ndarray]]:
  reader = imageio_ffmpeg.read_frames(path)
  meta = next(reader)
  width, height = meta["size"]
  return meta, [np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def run_copy(smoke_run_dir, tmp_path) -> str:
  return shutil.copytree(smoke_run_dir, str(tmp_path / "run"))


def test_cli_writes_table_json_and_video(smoke_run_dir, tmp_path):
  before = tree_digest(smoke_run_dir)
  json_path, video_path = str(tmp_path / "out.json"), str(tmp_path / "out.mp4")
  done = run_cli([smoke_run_dir, "--episodes", "2", "--seed", "3", "--json", json_path, "--video", video_path])
  assert done.returncode == 0, done.stderr[-3000:]
  assert tree_digest(smoke_run_dir) == before  # --json given: nothing is written into the run

  result = json.load(open(json_path))
  config = load_config(smoke_run_dir)
  steps = checkpoint_steps(smoke_run_dir)
  with CheckpointStore(os.path.join(smoke_run_dir, "checkpoints"), read_only=True) as store:
    env_steps = store.read_metadata(steps[-1])["env_steps"]
  assert result["game"] == "breakout"
  assert result["step"] == steps[-1]  # the newest checkpoint
  assert result["checkpoint"] == os.path.join(os.path.abspath(smoke_run_dir), "checkpoints", str(steps[-1]))
  assert result["env_steps"] == env_steps
  assert result["epsilon"] == config.agent.eval_epsilon == 0.01
  assert result["seed"] == 3
  assert result["protocol"]["sticky_action_prob"] == config.env.sticky_action_prob
  assert result["protocol"]["max_episode_frames"] == config.env.max_episode_frames == 4000
  assert len(result["episodes"]) == result["num_episodes"] == 2
  returns = [episode["return"] for episode in result["episodes"]]
  for episode in result["episodes"]:
    assert episode["return"] == int(episode["return"]) >= 0  # Breakout scores are whole points, never clipped
    assert episode["length"] == episode["length_steps"]
    assert 1 <= episode["length_steps"] <= 4000 // 4
    assert episode["truncated"] == (episode["length_steps"] == 1000)
  assert result["mean_return"] == pytest.approx(np.mean(returns))
  assert result["median_return"] == pytest.approx(np.median(returns))
  assert result["stderr_return"] == pytest.approx(abs(returns[0] - returns[1]) / 2)  # std(ddof=1)/sqrt(2) for n=2
  assert result["human_normalized_score"] == pytest.approx((np.mean(returns) - 1.7) / (30.5 - 1.7))

  lines = done.stdout.splitlines()
  for index, episode in enumerate(result["episodes"]):
    row = next(line.split() for line in lines if line.split()[:1] == [str(index)])
    assert float(row[1]) == episode["return"] and int(row[2].replace(",", "")) == episode["length_steps"]
  assert any(line.startswith("mean ") for line in lines)

  # The video: episode 0 of the table, one frame per agent step, native size, H.264 yuv420p.
  meta, frames = read_video(video_path)
  assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
  assert meta["size"] == (160, 210) and meta["fps"] == 15.0
  assert len(frames) == result["episodes"][0]["length_steps"] == result["video"]["frames"]
  assert result["video"]["return"] == result["episodes"][0]["return"]
  assert not os.path.exists(video_path + ".partial")


def test_recorded_episode_is_the_played_one(smoke_run_dir, tmp_path):
  with open_run(smoke_run_dir, host_template=True) as run:
    config = run.config
    params = run.restore()[0].params
  kwargs = dict(num_episodes=2, seed=11, epsilon=0.5)  # half random: games end with a game over well before the cap
  frames = []
  video_path = str(tmp_path / "episode.mp4")
  with Mp4Writer(video_path, width=160, height=210, fps=15) as writer:
    def on_frame(frame):
      frames.append(frame)
      writer.write(frame)

    episodes, recorded = evaluate_and_record(config.agent, params, config.game, config.env, on_frame=on_frame, **kwargs)
  # The same games as training.evaluation.evaluate plays, and the RGB copy saw episode 0 score and end alike.
  assert episodes == evaluate(config.agent, params, config.game, config.env, **kwargs)
  assert not episodes[0].truncated  # a real game over, so the terminal was checked too
  assert recorded.episode_return == episodes[0].episode_return
  assert recorded.length_steps == recorded.num_frames == len(frames) == episodes[0].length_steps
  assert all(frame.shape == (210, 160, 3) and frame.dtype == np.uint8 for frame in frames)
  assert not np.array_equal(frames[0], frames[-1])  # the screens change: the ball moves, bricks go

  meta, decoded = read_video(video_path)
  assert len(decoded) == len(frames)
  # H.264 is lossy; the decoded screens are the recorded ones up to compression noise.
  assert float(np.mean(np.abs(np.stack(decoded).astype(int) - np.stack(frames).astype(int)))) < 2.0


@pytest.mark.parametrize("budget_frames,games,cut_off_steps", [(123, 3, 0), (122, 2, 9), (40, 0, 9)])
def test_an_evaluation_on_a_budget_of_frames_counts_them_as_dqn_zoo_does(smoke_run_dir, budget_frames, games,
                                                                         cut_off_steps):
  # 10-step games (a 40-frame cap; no game over that soon): DQN Zoo counts each game's first timestep and each
  # frame after it (parts.py:run_loop's yields), 1 + 10 x 4 = 41 frames a game. 123 frames hold 3 games and not
  # the 4th's first timestep; 122 hold 2 games and 1 + 9 x 4 = 37 frames of the 3rd, cut off after 9 steps; 40
  # hold no whole game, so the score is the cut-off game's so far.
  import dataclasses

  with open_run(smoke_run_dir, host_template=True) as run:
    config = run.config
    params = run.restore()[0].params
  protocol = dataclasses.replace(config.env, max_episode_frames=40)
  played = evaluate_for_frames(config.agent, params, config.game, protocol, budget_frames=budget_frames, seed=3,
                               epsilon=0.5)
  assert len(played.episodes) == games and all(e.length_steps == 10 and e.truncated for e in played.episodes)
  assert played.cut_off_steps == cut_off_steps and played.budget_frames == budget_frames
  if games:  # the first game is the one `evaluate` plays with the same seed (same environment, same policy draws)
    assert played.episodes[0] == evaluate(config.agent, params, config.game, protocol, num_episodes=1, seed=3,
                                          epsilon=0.5)[0]
    # Breakout's no-op frames score nothing: DQN Zoo's returns (without them) are the real ones
    assert played.returns_without_noops == [e.episode_return for e in played.episodes]
    assert played.dqn_zoo_episode_return == np.mean([e.episode_return for e in played.episodes])
  else:
    assert played.dqn_zoo_episode_return == played.cut_off_return_without_noops == played.cut_off_return


def test_follower_with_another_seed_is_caught():
  """The lockstep check bites: a copy seeded differently (other sticky-action draws) diverges and raises."""
  from envs import PROTOCOLS, AtariEnv

  protocol = PROTOCOLS["machado2018"]
  follower = ScreenFollower("breakout", protocol, seed=6)
  rng = np.random.default_rng(0)
  with AtariEnv("breakout", 1, protocol, seed=5, num_threads=1) as env, pytest.raises(LockstepError, match="diverged"):
    env.reset()
    follower.reset()
    for _ in range(2000):
      action = int(rng.integers(env.num_actions))
      step = env.step(np.array([action]))
      _, done = follower.step(action, step, 0)
      if done:
        follower.reset()
        env.reset()
  follower.close()


def test_checkpoint_directory_form_and_default_json_path(run_copy, capsys):
  steps = checkpoint_steps(run_copy)
  assert len(steps) >= 2
  common = ["--episodes", "1", "--epsilon", "1", "--seed", "7"]
  assert eval_cli.main([os.path.join(run_copy, "checkpoints", str(steps[0])), *common]) == 0
  from_checkpoint_dir = json.load(open(os.path.join(run_copy, "eval", f"step{steps[0]}.json")))
  assert from_checkpoint_dir["step"] == steps[0]
  assert from_checkpoint_dir["run_dir"] == os.path.abspath(run_copy)
  assert eval_cli.main([run_copy, "--step", str(steps[0]), *common, "--json", os.path.join(run_copy, "a.json")]) == 0
  from_run_dir = json.load(open(os.path.join(run_copy, "a.json")))
  assert from_run_dir["step"] == steps[0]
  assert from_run_dir["episodes"] == from_checkpoint_dir["episodes"]  # same step, seed and epsilon: the same games
  assert eval_cli.main([os.path.join(run_copy, "checkpoints", str(steps[-1])), *common]) == 0
  assert json.load(open(os.path.join(run_copy, "eval", f"step{steps[-1]}.json")))["step"] == steps[-1]


def read_only_command(run_dir: str, command: list[str]) -> list[str]:
  """`command` run where `run_dir` cannot be written: as another user, its write bits off are enough; as root
  (who writes anyway) a read-only bind mount of it in a private mount namespace. Skips where neither works."""
  for folder, _, files in os.walk(run_dir):
    for name in files:
      os.chmod(os.path.join(folder, name), 0o444)
    os.chmod(folder, 0o555)
  if os.geteuid() != 0:
    return command
  quoted = " ".join(shlex.quote(part) for part in command)
  script = f"mount --bind {shlex.quote(run_dir)} {shlex.quote(run_dir)} && " \
           f"mount -o remount,bind,ro {shlex.quote(run_dir)} && exec {quoted}"
  probe = subprocess.run(["unshare", "-m", "sh", "-c", script.replace(f"exec {quoted}", f"! touch {shlex.quote(run_dir)}/w")],
                         capture_output=True)
  if probe.returncode != 0:
    pytest.skip("running as root without a way to make a directory read-only (no unshare -m / mount)")
  return ["unshare", "-m", "sh", "-c", script]


def test_a_read_only_run_is_evaluated_and_only_the_unsaved_default_json_is_said(smoke_run_dir, tmp_path):
  run_dir = shutil.copytree(smoke_run_dir, str(tmp_path / "run"))
  before = tree_digest(run_dir)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  try:
    command = read_only_command(run_dir, [sys.executable, "eval.py", run_dir, "--episodes", "1", "--epsilon", "1"])
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{load_config(run_dir).game}" in done.stdout and "return" in done.stdout.lower(), done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith(f"results not saved: {run_dir}/eval is not writable")
    assert "Traceback" not in done.stderr
    command = read_only_command(run_dir, [sys.executable, "eval.py", run_dir, "--episodes", "1", "--json",
                                          f"{run_dir}/x.json"])
    explicit = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert explicit.returncode == 1, explicit.stderr[-3000:]
    assert explicit.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {run_dir}/x.json")
  finally:
    for folder, _, _ in os.walk(run_dir):
      os.chmod(folder, 0o755)
  assert tree_digest(run_dir) == before


def test_missing_step_exits_2_listing_steps(smoke_run_dir, tmp_path):
  run_dir = shutil.copytree(smoke_run_dir, str(tmp_path / "run"))
  before = tree_digest(run_dir)
  done = run_cli([run_dir, "--step", "7"])
  assert done.returncode == 2
  steps = ", ".join(map(str, checkpoint_steps(run_dir)))
  assert done.stderr.strip().splitlines() == [f"error: no checkpoint for step 7 in {run_dir}/checkpoints; steps there: {steps}"]
  assert tree_digest(run_dir) == before


def _error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_run_without_checkpoints_exits_2(run_copy, capsys):
  shutil.rmtree(os.path.join(run_copy, "checkpoints"))
  before = tree_digest(run_copy)
  assert eval_cli.main([run_copy]) == 2
  assert "has no checkpoints" in _error_line(capsys)
  assert tree_digest(run_copy) == before
  os.makedirs(os.path.join(run_copy, "checkpoints"))
  before = tree_digest(run_copy)
  assert eval_cli.main([run_copy]) == 2
  assert "has no checkpoints" in _error_line(capsys)
  assert tree_digest(run_copy) == before


@pytest.mark.parametrize("field, value, expected", [
    ("layer_norm", False, "params/params/torso/dense0_ln/bias is in the checkpoint but not in config.json's agent"),
    ("mlp_hidden_sizes", [32], "params/params/head/kernel has shape (64, 4) in the checkpoint, (32, 4) from config.json"),
    ("torso", "nature", "params/params/torso/conv0/bias is missing from the checkpoint"),
    ("optimizer", "rmsprop", "does not match the agent (optimizer=rmsprop)"),
])
def test_mismatched_network_config_exits_2(run_copy, capsys, field, value, expected):
  config_path = os.path.join(run_copy, "config.json")
  config = json.load(open(config_path))
  config["agent"][field] = value
  with open(config_path, "w") as handle:
    json.dump(config, handle)
  before = tree_digest(run_copy)
  assert eval_cli.main([run_copy, "--episodes", "1"]) == 2
  line = _error_line(capsys)
  assert f"checkpoint {checkpoint_steps(run_copy)[-1]} does not match" in line and expected in line, line
  assert tree_digest(run_copy) == before


@pytest.mark.parametrize("args, expected", [
    (["--episodes", "0"], "episodes=0 is outside the allowed range [1, inf)"),
    (["--epsilon", "1.5"], "epsilon=1.5 is outside the allowed range [0, 1]"),
    (["--epsilon", "-0.1"], "epsilon=-0.1 is outside the allowed range [0, 1]"),
    (["--video", "/no/such/dir/out.mp4"], "video='/no/such/dir/out.mp4': directory /no/such/dir does not exist"),
])
def test_bad_values_exit_2(run_copy, capsys, args, expected):
  before = tree_digest(run_copy)
  assert eval_cli.main([run_copy, *args]) == 2
  assert _error_line(capsys) == f"error: {expected}"
  assert tree_digest(run_copy) == before


def test_paths_that_are_not_runs_exit_2(run_copy, tmp_path, capsys):
  assert eval_cli.main([str(tmp_path / "missing")]) == 2
  assert "is not a directory" in _error_line(capsys)
  assert eval_cli.main([os.path.join(run_copy, "metrics")]) == 2
  assert "is neither a run directory" in _error_line(capsys)
  steps = checkpoint_steps(run_copy)
  assert eval_cli.main([os.path.join(run_copy, "checkpoints", str(steps[0])), "--step", str(steps[-1])]) == 2
  assert "contradicts the checkpoint directory" in _error_line(capsys)


def test_gpu_saved_checkpoint_restores_on_cpu(run_copy, capsys):
  """A checkpoint whose arrays were saved from a GPU (Orbax records the device) loads on a CPU-only process."""
  step = checkpoint_steps(run_copy)[-1]
  sharding_path = os.path.join(run_copy, "checkpoints", str(step), "state", "_sharding")
  text = open(sharding_path).read()
  assert text.count("TFRT_CPU_0") >= 10
  with open(sharding_path, "w") as handle:
    handle.write(text.replace("TFRT_CPU_0", "cuda:0"))
  assert eval_cli.main([run_copy, "--episodes", "1", "--epsilon", "1", "--json", os.path.join(run_copy, "e.json")]) == 0
  result = json.load(open(os.path.join(run_copy, "e.json")))
  assert result["step"] == step and result["jax_backend"] == "cpu"


def test_summary_statistics_and_human_normalised_score():
  assert reference_scores()["breakout"] == (1.7, 30.5)
  assert reference_scores()["pong"] == (-20.7, 14.6)
  assert human_normalized_score("breakout", 16.1) == pytest.approx(0.5)
  summary = eval_cli.summarize("breakout", [10.0, 20.0, 30.0, 60.0])
  assert summary["mean_return"] == 30.0
  assert summary["median_return"] == 25.0
  # sample std of (10, 20, 30, 60) = sqrt((400 + 100 + 0 + 900) / 3) = 21.602; / sqrt(4)
  assert summary["stderr_return"] == pytest.approx(math.sqrt(1400 / 3) / 2)
  assert summary["human_normalized_score"] == pytest.approx((30.0 - 1.7) / 28.8)
  assert eval_cli.summarize("pong", [-20.7])["human_normalized_score"] == pytest.approx(0.0)
  assert eval_cli.summarize("pong", [-20.7])["stderr_return"] is None  # undefined for one episode
  assert eval_cli.summarize("pong", [14.6])["human_normalized_score"] == pytest.approx(1.0)
  assert "tetris" not in reference_scores()
  assert eval_cli.summarize("tetris", [3.0])["human_normalized_score"] is None
