"""compare.py on run directories written here with known configs and returns: variant names, hand-computed
human-normalised aggregates, probability of improvement, one-seed mode, in-progress runs, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

import compare
from common.checkpoints import CheckpointStore
from reports.runs import binned_curve, format_value, interpolated_curve, variant_names
from rliable import library as rly_library
from rliable import metrics as rly_metrics
from training.config import PRESETS, save_config

# Random and human reference scores (envs/reference/atari_scores.csv, DQN Zoo's atari_data.py).
REFERENCE = {"breakout": (1.7, 30.5), "pong": (-20.7, 14.6), "qbert": (163.9, 13455.0)}
GAMES = ("breakout", "pong", "qbert")
RLY = {"mean": rly_metrics.aggregate_mean, "median": rly_metrics.aggregate_median, "iqm": rly_metrics.aggregate_iqm}
# Human-normalised final score of each run: variant -> game -> [seed 0, seed 1].
HNS = {
    "dqn": {"breakout": [0.1, 0.3], "pong": [0.0, 0.2], "qbert": [0.5, 0.9]},
    "ln": {"breakout": [0.4, 0.6], "pong": [0.2, 0.8], "qbert": [0.5, 1.3]},
}
# Both set explicitly: the smoke preset's own layer_norm value is not what this test is about.
DQN_AGENT = {"layer_norm": False, "weight_decay": 0.0}
LN_AGENT = {"layer_norm": True, "weight_decay": 1e-4}


def game_score(game: str, hns: float) -> float:
  random_score, human_score = REFERENCE[game]
  return random_score + hns * (human_score - random_score)


def write_rows(path: str, rows: list[dict], torn_tail: str = "") -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as handle:
    handle.writelines(json.dumps(row) + "\n" for row in rows)
    handle.write(torn_tail)


def make_run(run_dir: str, game: str, seed: int, score: float, *, agent: dict, finished: bool | None,
             eval_score: float | None = None, plasticity: list[dict] | None = None, **run_fields) -> None:
  """A run directory: config.json, 4 training episodes whose last 2 return `score`, an optional evaluation,
  and a checkpoint whose metadata says `finished` (None: no checkpoint yet)."""
  os.makedirs(run_dir)
  smoke = PRESETS["smoke"]
  config = dataclasses.replace(smoke, game=game, seed=seed, run_dir=run_dir,
                               agent=dataclasses.replace(smoke.agent, **agent), **run_fields)
  save_config(config, run_dir)
  returns = [1000.0, -1000.0, score, score]  # only the last 2 count with --last-episodes 2
  write_rows(os.path.join(run_dir, "metrics", "episodes.jsonl"),
             [{"env_steps": 100 * (i + 1), "actor": 0, "return": r, "length_steps": 50} for i, r in enumerate(returns)],
             torn_tail='{"env_steps": 500, "ret')  # a run being written: the torn last line is skipped
  if eval_score is not None:
    write_rows(os.path.join(run_dir, "metrics", "eval.jsonl"), [
        {"env_steps": 200, "step": 10, "mean_return": -5000.0, "num_episodes": 4},
        {"env_steps": 400, "step": 20, "mean_return": eval_score, "num_episodes": 4},
    ])
  if plasticity is not None:
    write_rows(os.path.join(run_dir, "metrics", "plasticity.jsonl"), plasticity)
  if finished is not None:
    with CheckpointStore(os.path.join(run_dir, "checkpoints")) as store:
      store.save(20, {"w": np.zeros(2, np.float32)}, {"finished": finished, "env_steps": 400})


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> str:
  """2 variants x 3 games x 2 seeds under root/<variant>/<game>/seed<seed>; qbert seed 1 is in progress in both."""
  root = str(tmp_path_factory.mktemp("compare") / "runs")
  for variant, games in HNS.items():
    agent = LN_AGENT if variant == "ln" else DQN_AGENT
    for game in GAMES:
      for seed, hns in enumerate(games[game]):
        run_dir = os.path.join(root, variant, game, f"seed{seed}")
        score = game_score(game, hns)
        finished = True
        if game == "qbert" and seed == 1:
          finished = False if variant == "dqn" else None  # not final yet / no checkpoint yet
        # How a run ran differs between runs and must not split a variant.
        how = {"num_actors": 1 + seed, "total_env_steps": 2000 * (1 + seed), "log_every_s": 1.0 + seed}
        eval_score = None
        if variant == "ln" and game == "breakout" and seed == 0:
          eval_score, score = score, 777.0  # the evaluation decides, not the training episodes
        plasticity = None
        if game == "breakout":
          plasticity = [{"env_steps": 100, "step": 5, "srank": 5.0 + seed, "srank/layer_0": 1.0, "param_norm": 2.0},
                        {"env_steps": 400, "step": 20, "srank": 10.0 + 10 * seed + (5 if variant == "ln" else 0),
                         "param_norm": 4.0}]
        make_run(run_dir, game, seed, score, agent=agent, finished=finished, eval_score=eval_score,
                 plasticity=plasticity, **how)
  os.makedirs(os.path.join(root, "not_a_run", "empty"))  # searched, holds nothing
  return root


def expected_aggregates(by_game: dict[str, list[float]]) -> dict[str, float]:
  """Mean and median over games of the per-game means; IQM: sorted pooled runs, floor(n/4) dropped per side."""
  game_means = [float(np.mean(v)) for v in by_game.values()]
  pooled = sorted(x for v in by_game.values() for x in v)
  cut = len(pooled) // 4
  return {"mean": float(np.mean(game_means)), "median": float(np.median(game_means)),
          "iqm": float(np.mean(pooled[cut:len(pooled) - cut]))}


def run_compare(argv: list[str], capsys) -> tuple[int, str, str]:
  code = compare.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_report_of_two_variants_with_hand_computed_scores(runs_root, tmp_path, capsys):
  out = str(tmp_path / "report")
  code, stdout, _ = run_compare([runs_root, "--out", out, "--last-episodes", "2"], capsys)
  assert code == 0, stdout
  with open(os.path.join(out, "summary.json")) as handle:
    summary = json.load(handle)

  assert [v["name"] for v in summary["variants"]] == ["dqn", "ln"]
  assert summary["variants"][1]["fields"] == {"agent.layer_norm": True, "agent.weight_decay": 1e-4}
  assert [v["runs"] for v in summary["variants"]] == [6, 6] and [v["in_progress"] for v in summary["variants"]] == [1, 1]

  # Hand values (see HNS): dqn game means 0.2, 0.1, 0.7 -> mean 1/3, median 0.2, IQM mean(0.1, 0.2, 0.3, 0.5) = 0.275;
  # layer_norm+wd game means 0.5, 0.5, 0.9 -> mean 1.9/3, median 0.5, IQM mean(0.4, 0.5, 0.6, 0.8) = 0.575.
  hand = {"dqn": {"mean": 1 / 3, "median": 0.2, "iqm": 0.275}, "ln": {"mean": 1.9 / 3, "median": 0.5, "iqm": 0.575}}
  for name, variant in (("dqn", "dqn"), ("ln", "ln")):
    assert expected_aggregates(HNS[variant]) == pytest.approx(hand[name])
    row = summary["aggregate"]["variants"][name]
    assert row["games"] == list(GAMES) and row["runs"] == 6
    normalized = {game: np.array(HNS[variant][game]) for game in GAMES}
    for metric, value in hand[name].items():
      assert row[metric]["value"] == pytest.approx(value)
      low, high = row[metric]["ci"]
      assert low <= row[metric]["value"] <= high and low < high
      # The interval is rliable's stratified bootstrap, called here directly on the [runs, games] score matrix,
      # with the report's fixed seed (of NumPy's global generator: reports/stats.py, _seeded) and 2,000 replicates.
      matrix = np.stack([normalized[game] for game in GAMES], axis=1)
      np.random.seed(0)
      point, ci = rly_library.get_interval_estimates({"v": matrix}, lambda m: np.array([RLY[metric](m)]), reps=2000)
      assert row[metric]["value"] == pytest.approx(float(point["v"][0]))
      assert (low, high) == pytest.approx(tuple(np.ravel(ci["v"])), abs=1e-9)

  # P(ln > dqn): breakout 4/4, pong (0.2 vs 0.2 a tie) 3.5/4, qbert (0.5 vs 0.5 a tie) 2.5/4 -> mean 5/6.
  [pair] = summary["probability_of_improvement"]
  assert (pair["x"], pair["y"]) == ("ln", "dqn")
  assert pair["value"] == pytest.approx((1 + 0.875 + 0.625) / 3)
  assert pair["ci"][0] <= pair["value"] <= pair["ci"][1] <= 1.0

  # Per game: raw scores in seed order, the eval run scored by its last evaluation.
  assert summary["games"]["pong"]["dqn"]["scores"] == pytest.approx([game_score("pong", h) for h in HNS["dqn"]["pong"]])
  assert summary["games"]["breakout"]["ln"]["scores"] == pytest.approx(
      [game_score("breakout", 0.4), game_score("breakout", 0.6)])
  by_dir = {os.path.relpath(r["run_dir"], runs_root): r for r in summary["runs"]}
  assert by_dir["ln/breakout/seed0"]["score_source"] == "eval" and by_dir["ln/breakout/seed0"]["score_env_steps"] == 400
  assert by_dir["dqn/pong/seed0"]["score_source"] == "train" and by_dir["dqn/pong/seed0"]["score_episodes"] == 2
  assert by_dir["dqn/qbert/seed1"]["finished"] is False and by_dir["dqn/qbert/seed1"]["checkpoints"] == 1
  assert by_dir["ln/qbert/seed1"]["finished"] is False and by_dir["ln/qbert/seed1"]["checkpoints"] == 0
  assert sum(r["finished"] for r in summary["runs"]) == 10
  assert by_dir["dqn/pong/seed1"]["human_normalized_score"] == pytest.approx(0.2)

  # Learning curves: one entry per game and variant, the 4 episodes (torn 5th skipped) on the common grid.
  curve = summary["curves"]["pong"]["dqn"]
  assert curve["runs"] == 2 and len(curve["env_steps"]) == 50 and curve["env_steps"][-1] == pytest.approx(396.0)
  assert curve["mean"][-1] == pytest.approx(np.mean([game_score("pong", 0.0), game_score("pong", 0.2)]))
  # Plasticity: last srank per run: dqn 10, 20 -> 15; ln 15, 25 -> 20. Per-layer keys are not plotted.
  plasticity = summary["plasticity"]
  assert plasticity["runs_with_file"] == 4 and list(plasticity["metrics"]) == ["srank", "param_norm"]
  assert plasticity["metrics"]["srank"]["dqn"]["last_mean"] == pytest.approx(15.0)
  assert plasticity["metrics"]["srank"]["ln"]["last_mean"] == pytest.approx(20.0)
  # Over training, at the probed env steps: dqn srank (5 + 6) / 2 at 100 and (10 + 20) / 2 at 400.
  assert plasticity["metrics"]["srank"]["dqn"]["env_steps"] == [100.0, 400.0]
  assert plasticity["metrics"]["srank"]["dqn"]["mean"] == pytest.approx([5.5, 15.0])

  for name in ("learning_curves", "final_scores", "aggregate", "probability_of_improvement", "plasticity"):
    with open(os.path.join(out, f"{name}.png"), "rb") as handle:
      assert handle.read(8) == b"\x89PNG\r\n\x1a\n", name
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert "| dqn | 3 | 6 | 0.3333 [" in report and "| ln | 3 | 6 | 0.6333 [" in report
  assert "2 run(s) in progress" in report and "in progress (no checkpoint yet)" in report
  assert "`eval` = mean return of the run's last evaluation" in report and "last 2 training episodes" in report
  assert "no interval" not in report.lower() and "![plasticity](plasticity.png)" in report
  assert "12 runs (2 in progress) in 2 variants: dqn (6), ln (6)" in stdout


def test_one_seed_gives_point_estimates_and_says_there_are_no_intervals(runs_root, tmp_path, capsys):
  out = str(tmp_path / "one_seed")
  seed0 = [os.path.join(runs_root, v, g, "seed0") for v in ("dqn", "ln") for g in ("breakout", "pong")]
  code, stdout, _ = run_compare([*seed0, "--out", out, "--last-episodes", "2"], capsys)
  assert code == 0, stdout
  with open(os.path.join(out, "summary.json")) as handle:
    summary = json.load(handle)
  # dqn seed 0: breakout 0.1, pong 0.0 -> mean = median = 0.05; IQM of 2 values drops none -> 0.05.
  row = summary["aggregate"]["variants"]["dqn"]
  assert [row[m]["value"] for m in ("mean", "median", "iqm")] == pytest.approx([0.05, 0.05, 0.05])
  assert all(row[m]["ci"] is None for m in ("mean", "median", "iqm")) and row["intervals"] is False
  [pair] = summary["probability_of_improvement"]
  assert pair["value"] == pytest.approx(1.0) and pair["ci"] is None  # ln 0.4 > 0.1 and 0.2 > 0.0
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert "**No intervals**" in report and "no interval (one run per game)" in report
  assert "Skipped: no run has metrics/plasticity.jsonl" not in report  # the breakout runs have one
  assert not os.path.exists(os.path.join(out, "nothing.png"))


def test_without_plasticity_files_the_section_is_skipped(runs_root, tmp_path, capsys):
  out = str(tmp_path / "pong_only")
  code, _, _ = run_compare([os.path.join(runs_root, "dqn", "pong"), "--out", out, "--reps", "200"], capsys)
  assert code == 0
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert "Skipped: no run has metrics/plasticity.jsonl." in report
  assert not os.path.exists(os.path.join(out, "plasticity.png"))
  # One variant: named after its runs' preset (not "dqn" whatever it is), and there is no pair to compare.
  with open(os.path.join(out, "summary.json")) as handle:
    summary = json.load(handle)
  assert [v["name"] for v in summary["variants"]] == ["smoke"] and summary["probability_of_improvement"] == []
  # A lone variant that departs from its preset says how.
  out = str(tmp_path / "ln_only")
  code, _, _ = run_compare([os.path.join(runs_root, "ln", "pong"), "--out", out, "--reps", "200"], capsys)
  with open(os.path.join(out, "summary.json")) as handle:
    assert [v["name"] for v in json.load(handle)["variants"]] == ["smoke+layer_norm+wd=1e-4"]


def test_damaged_runs_are_left_out_and_named_and_a_nan_return_does_not_poison_the_aggregates(runs_root, tmp_path,
                                                                                              capsys):
  """Pong, 2 variants x 2 seeds: one run's config.json cut short, one run's episodes.jsonl torn in its middle, and
  one NaN return appended to a third run. The report is written from the three healthy runs; the two damaged ones
  are named with the reason on the terminal and in the report; the NaN row is left out of the scores, and said."""
  import shutil

  root = str(tmp_path / "runs")
  for variant in ("dqn", "ln"):
    shutil.copytree(os.path.join(runs_root, variant, "pong"), os.path.join(root, variant))
  cut_config = os.path.join(root, "dqn", "seed1", "config.json")
  with open(cut_config, "r+") as handle:
    handle.truncate(len(handle.read()) // 2)
  torn = os.path.join(root, "ln", "seed1", "metrics", "episodes.jsonl")
  with open(torn) as handle:
    lines = handle.read().split("\n")
  with open(torn, "w") as handle:
    handle.write("\n".join(lines[:1] + ['{"env_steps": 150, "ret'] + lines[1:]))
  episodes = os.path.join(root, "dqn", "seed0", "metrics", "episodes.jsonl")
  with open(episodes) as handle:
    whole = handle.read().rsplit("\n", 1)[0]  # without the torn tail of a run being written
  with open(episodes, "w") as handle:  # Python's json writes and reads NaN
    handle.write(whole + '\n{"env_steps": 600, "actor": 0, "return": NaN, "length_steps": 50}\n')

  out = str(tmp_path / "report")
  code, stdout, err = run_compare([root, "--out", out, "--last-episodes", "2", "--reps", "200"], capsys)
  assert code == 0, err
  assert f"warning: left out {os.path.join(root, 'dqn', 'seed1')}: {cut_config} cannot be read" in err
  assert f"warning: left out {os.path.join(root, 'ln', 'seed1')}: {torn}:2 is not a JSON object" in err
  assert f"warning: {os.path.join(root, 'dqn', 'seed0')}: left out of the scores: 1 episodes with a non-finite " \
         "return" in err
  assert stdout.startswith("2 runs (0 in progress, 2 left out) in 2 variants")
  with open(os.path.join(out, "summary.json")) as handle:
    summary = json.load(handle)
  assert sorted(r["run_dir"] for r in summary["skipped_runs"]) == [os.path.join(root, "dqn", "seed1"),
                                                                  os.path.join(root, "ln", "seed1")]
  by_variant = {row["variant"]: row for row in summary["runs"]}
  assert by_variant["dqn"]["score"] == pytest.approx(game_score("pong", HNS["dqn"]["pong"][0]))
  assert by_variant["dqn"]["rows_left_out"] == {"episodes with a non-finite return": 1}
  for name, variant in (("dqn", "dqn"), ("layer_norm+wd=1e-4", "ln")):
    row = summary["aggregate"]["variants"][name]
    assert row["mean"]["value"] == pytest.approx(HNS[variant]["pong"][0])  # finite: seed 0's own score
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert "**2 run(s) left out**: they could not be read." in report and f"- {torn}" not in report
  assert f"- {os.path.join(root, 'ln', 'seed1')}: {torn}:2 is not a JSON object" in report
  assert f"- {os.path.join(root, 'dqn', 'seed0')}: 1 episodes with a non-finite return" in report


def test_bad_paths_are_one_error_line_and_exit_2(tmp_path, capsys):
  code, _, err = run_compare([str(tmp_path / "missing"), "--out", str(tmp_path / "out")], capsys)
  assert code == 2 and err.strip() == f"error: {tmp_path / 'missing'} does not exist"
  (tmp_path / "empty" / "deeper").mkdir(parents=True)
  code, _, err = run_compare([str(tmp_path / "empty")], capsys)
  assert code == 2 and err.startswith("error: no run directories") and len(err.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "out")


def test_variant_names():
  base = {"agent.layer_norm": False, "agent.head": "scalar", "agent.weight_decay": 0.0, "agent.n_step": 1}
  sets = [base, {**base, "agent.layer_norm": True}, {**base, "agent.head": "two_hot", "agent.weight_decay": 1e-4},
          {**base, "agent.n_step": 3}, {**base, "agent.layer_norm": True, "agent.weight_decay": 1e-4, "agent.head": "two_hot"}]
  assert variant_names(sets) == ["dqn", "layer_norm", "two_hot+wd=1e-4", "n=3", "layer_norm+two_hot+wd=1e-4"]
  # The reference is the value most variants share; a boolean turned off is `no_<name>`.
  clip = [{"agent.clip_rewards": True, "x": 1}, {"agent.clip_rewards": True, "x": 2}, {"agent.clip_rewards": False, "x": 1}]
  assert variant_names(clip) == ["dqn", "x=2", "no_clip_rewards"]
  # A tie goes to the default.
  pair = [{"agent.layer_norm": False}, {"agent.layer_norm": True}]
  assert variant_names(pair, {"agent.layer_norm": False}) == ["dqn", "layer_norm"]
  assert variant_names(pair, {"agent.layer_norm": True}) == ["no_layer_norm", "dqn"]
  # The same leaf name in two sections keeps its section.
  same_leaf = [{"env.a": 1, "agent.a": 1}, {"env.a": 2, "agent.a": 3}]
  assert variant_names(same_leaf, {"env.a": 1, "agent.a": 1}) == ["dqn", "env.a=2+agent.a=3"]


@pytest.mark.parametrize("value, text", [(1e-4, "1e-4"), (2.5e-4, "2.5e-4"), (0.5, "0.5"), (0.99, "0.99"),
                                         (10.0, "10"), (3, "3"), ((64, 64), "64x64"), (True, "True"), ("adam", "adam")])
def test_format_value(value, text):
  assert format_value(value) == text


def test_binned_and_interpolated_curves():
  edges = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
  # Bin 0 has returns 2 and 4; bin 1 is empty inside the run (carried forward); bin 3 is after the run's last episode.
  curve = binned_curve(np.array([1, 5, 25]), np.array([2.0, 4.0, 9.0]), edges)
  np.testing.assert_allclose(curve, [3.0, 3.0, 9.0, np.nan])
  assert np.isnan(binned_curve(np.array([], np.int64), np.array([]), edges)).all()
  line = interpolated_curve(np.array([10.0, 30.0]), np.array([1.0, 3.0]), np.array([0.0, 10.0, 20.0, 30.0, 40.0]))
  np.testing.assert_allclose(line, [np.nan, 1.0, 2.0, 3.0, np.nan])


def test_plasticity_means_only_where_every_seed_has_probed_and_each_seed_keeps_its_line(tmp_path, capsys):
  # Seed 0 probed at 100 and 400, seed 1 at 200 and 800: only 200 and 400 lie inside both runs' probed ranges.
  for seed, probes in ((0, [(100, 4.0), (400, 10.0)]), (1, [(200, 6.0), (800, 2.0)])):
    make_run(str(tmp_path / "runs" / f"seed{seed}"), "pong", seed, game_score("pong", 0.1), agent={}, finished=True,
             plasticity=[{"env_steps": s, "step": s // 20, "srank": v} for s, v in probes])
  out = str(tmp_path / "out")
  code, _, _ = run_compare([str(tmp_path / "runs"), "--out", out, "--reps", "200"], capsys)
  assert code == 0
  with open(os.path.join(out, "summary.json")) as handle:
    line = json.load(handle)["plasticity"]["metrics"]["srank"]["smoke"]
  assert line["env_steps"] == [100.0, 200.0, 400.0, 800.0]
  # At 200: seed 0 interpolated 4 + (10 - 4) / 3 = 6, seed 1 measured 6 -> 6. At 400: 10 and 6 + (2 - 6) / 3.
  assert line["mean"][0] is None and line["mean"][3] is None
  assert line["mean"][1] == pytest.approx(6.0) and line["mean"][2] == pytest.approx((10.0 + 6.0 - 4.0 / 3) / 2)
  assert [(r["seed"], r["env_steps"], r["values"]) for r in line["per_run"]] == [
      (0, [100.0, 400.0], [4.0, 10.0]), (1, [200.0, 800.0], [6.0, 2.0])]


# Ranges whose default ticks overlapped (21 and 6 touching label pairs before the fix).
@pytest.mark.parametrize("low, high", [(0.9993, 1.0004), (-0.003, 0.0021), (-0.0123, 0.0345)])
def test_aggregate_plot_tick_labels_do_not_overlap(tmp_path, monkeypatch, low, high):
  from reports import plots

  figures = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
  names = [f"variant_{i}_with_a_long_name" for i in range(4)]
  step = (high - low) / 10
  aggregate = {name: {m: {"value": (low + high) / 2, "ci": [low + i * step, high - i * step]}
                      for m in ("mean", "median", "iqm")} for i, name in enumerate(names)}
  plots.plot_aggregates(aggregate, names, str(tmp_path / "a.png"), "title")
  [fig] = figures
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  for ax in fig.axes:
    boxes = [label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()]
    assert len(boxes) >= 2
    for a, b in zip(boxes, boxes[1:]):
      assert not a.overlaps(b), [label.get_text() for label in ax.get_xticklabels()]
  # Panels side by side do not overlap each other's labels either.
  extents = [ax.get_tightbbox(renderer) for ax in fig.axes]
  for a, b in zip(extents, extents[1:]):
    assert a.x1 <= b.x0 + 1.0


def test_a_run_evaluated_on_a_budget_of_frames_is_reported_as_dqn_zoo_tabulates_it(tmp_path, capsys):
  # DQN Zoo's evaluation schedule (the dqn_zoo preset's, on the smoke run): 1,000 steps an iteration, iteration 0
  # at the start; the evaluator takes the first weights published at or after each iteration's end.
  run_dir = str(tmp_path / "runs" / "zoo")
  make_run(run_dir, "breakout", 0, 3.0, agent=DQN_AGENT, finished=True, eval_every_env_steps=1000,
           eval_frames=20_000, eval_at_start=True)
  scores = [1.0, 4.5, 30.5, 12.0]  # DQN Zoo's eval_episode_return of iterations 0..3
  write_rows(os.path.join(run_dir, "metrics", "eval.jsonl"), [
      {"env_steps": [3, 1040, 2000, 3100][i], "step": 10 * i, "mean_return": score + 1, "num_episodes": 2 + i,
       "dqn_zoo_episode_return": score, "budget_frames": 20_000, "cut_off_return": 0.0, "cut_off_steps": 7}
      for i, score in enumerate(scores)] + [  # a second evaluation in iteration 3 (late weights): not its row
      {"env_steps": 3900, "step": 40, "mean_return": 99.0, "num_episodes": 1, "dqn_zoo_episode_return": 99.0,
       "budget_frames": 20_000, "cut_off_return": 0.0, "cut_off_steps": 7}])
  out_dir = str(tmp_path / "report")
  code, out, _ = run_compare([os.path.dirname(run_dir), "--out", out_dir, "--reps", "200"], capsys)
  assert code == 0, out
  import csv
  with open(os.path.join(out_dir, "dqn_zoo_results.csv"), encoding="utf-8") as handle:
    rows = list(csv.DictReader(handle))
  assert [r["iteration"] for r in rows] == ["0", "1", "2", "3"]
  assert [float(r["eval_episode_return"]) for r in rows] == scores
  assert [int(r["frame"]) for r in rows] == [0, 4000, 8000, 12000]  # iteration x 1,000 steps x 4 frames
  assert [int(r["eval_num_episodes"]) for r in rows] == [2, 3, 4, 5]
  normalized = [(s - 1.7) / (30.5 - 1.7) for s in scores]  # DQN Zoo's atari_data.py: breakout (1.7, 30.5)
  assert np.allclose([float(r["normalized_return"]) for r in rows], normalized)
  assert np.allclose([float(r["capped_normalized_return"]) for r in rows], np.minimum(1.0, normalized))
  assert np.allclose([float(r["human_gap"]) for r in rows], 1.0 - np.minimum(1.0, normalized))
  assert {r["environment_name"] for r in rows} == {"breakout"} and {r["seed"] for r in rows} == {"0"}
  summary = json.load(open(os.path.join(out_dir, "summary.json")))
  (run,) = summary["runs"]
  assert run["score"] == 99.0 and run["score_source"] == "eval"  # the last evaluation, DQN Zoo's score of it
  report = open(os.path.join(out_dir, "report.md"), encoding="utf-8").read()
  # The last iteration's eval_episode_return (12.00) and the mean of the last 10 iterations (all 4 here).
  assert f"| zoo | {run['variant']} | 4 | 3 (12,000) | 12.00 | {normalized[-1]:.3f} | {np.mean(scores):.2f} (4) |" \
      in report, report


def _figures_of_report(argv: list[str], monkeypatch, capsys) -> dict[str, object]:
  """compare.main(argv), keeping each figure (by file name) laid out and drawn as `_save` lays it out."""
  from reports import plots

  figures = {}

  def keep(fig, path):
    fig.tight_layout()
    fig.canvas.draw()
    figures[os.path.basename(path)] = fig
    return path

  monkeypatch.setattr(plots, "_save", keep)
  code, stdout, err = run_compare(argv, capsys)
  assert code == 0, err
  return figures


def _legend_text(fig) -> str:
  return "\n".join(text.get_text() for legend in fig.legends for text in legend.get_texts())


def test_every_figure_keeps_its_legend_outside_its_axes_and_says_what_its_marks_are(runs_root, tmp_path, monkeypatch,
                                                                                     capsys):
  figures = _figures_of_report([runs_root, "--out", str(tmp_path / "out"), "--last-episodes", "2", "--reps", "200"],
                               monkeypatch, capsys)
  assert set(figures) == {"learning_curves.png", "final_scores.png", "aggregate.png", "probability_of_improvement.png",
                          "plasticity.png"}
  for name, fig in figures.items():
    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes), name  # no legend inside a panel
    [legend] = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
      if ax.get_visible():
        assert not box.overlaps(ax.get_window_extent(renderer)), name
  # What the marks are, on the figures themselves (2 seeds a game here: intervals everywhere).
  assert "bar: 95% stratified bootstrap interval" in _legend_text(figures["aggregate.png"])
  assert "tick: point estimate" in _legend_text(figures["aggregate.png"])
  assert "point estimate only" not in _legend_text(figures["aggregate.png"])
  assert "(6 runs)" in " ".join(t.get_text() for t in figures["aggregate.png"].axes[0].get_yticklabels())
  assert "band: bootstrap interval over runs" in _legend_text(figures["learning_curves.png"])
  assert "dqn (2 runs)" in _legend_text(figures["learning_curves.png"])
  assert "thin: one run" in _legend_text(figures["plasticity.png"])
  assert "hollow: run in progress" in _legend_text(figures["final_scores.png"])
  # One seed: the ticks are said to be point estimates only.
  seed0 = [os.path.join(runs_root, v, g, "seed0") for v in ("dqn", "ln") for g in ("breakout", "pong")]
  one_seed = _figures_of_report([*seed0, "--out", str(tmp_path / "one"), "--last-episodes", "2"], monkeypatch, capsys)
  for name in ("aggregate.png", "probability_of_improvement.png"):
    assert "point estimate only (one run per game: no interval)" in _legend_text(one_seed[name]), name


def test_the_variants_table_shows_only_what_each_variant_changes_and_links_its_config(tmp_path, capsys):
  # Three variants, each turning one field away from the baseline: before, every row listed every differing field.
  for name, agent in (("dqn", {}), ("ln", {"layer_norm": True}), ("wd", {"weight_decay": 1e-4})):
    make_run(str(tmp_path / "runs" / name), "pong", 0, -20.0, agent={"layer_norm": False, "weight_decay": 0.0, **agent},
             finished=True)
  out = str(tmp_path / "out")
  code, stdout, _ = run_compare([str(tmp_path / "runs"), "--out", out, "--reps", "100"], capsys)
  assert code == 0
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  section = report.split("## Variants")[1].split("\n## ")[0]
  rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if line.startswith("| ")}
  assert " | - (baseline) | " in rows["dqn"]
  assert " | agent.layer_norm=True | " in rows["layer_norm"] and "weight_decay" not in rows["layer_norm"]
  assert " | agent.weight_decay=1e-4 | " in rows["wd=1e-4"] and "layer_norm" not in rows["wd=1e-4"]
  assert "[config.json](configs/layer_norm.json)" in rows["layer_norm"]
  with open(os.path.join(out, "configs", "layer_norm.json")) as copy, \
      open(os.path.join(tmp_path, "runs", "ln", "config.json")) as original:
    assert copy.read() == original.read()
  # The terminal gets the same as a table.
  assert "layer_norm=True" in stdout and "(baseline)" in stdout and "weight_decay=1e-4" in stdout


def test_a_continual_comparison_names_its_sequence_and_draws_every_task_on_the_job_axis(tmp_path, monkeypatch, capsys):
  # Breakout -> Pong -> Breakout, 3,000 env steps a phase, evaluations of both tasks every 1,500 steps and at the end;
  # Pong never ends a training episode (as in a short phase), so it has no training curve: its evaluations show it.
  for name, agent, offset in (("dqn", {}, 0.0), ("ln", {"layer_norm": True}, 1.0)):
    run_dir = str(tmp_path / "runs" / name)
    make_run(run_dir, "breakout", 0, 2.0, agent={"layer_norm": False, **agent}, finished=True,
             tasks=("breakout", "pong"), task_switch_every_env_steps=3000, total_env_steps=9000,
             env=dataclasses.replace(PRESETS["smoke"].env, full_action_space=True))
    write_rows(os.path.join(run_dir, "metrics", "episodes.jsonl"),
               [{"env_steps": 1000 * i, "actor": 0, "return": 2.0, "length_steps": 50, "task": "breakout"}
                for i in (1, 2, 7, 8)])
    write_rows(os.path.join(run_dir, "metrics", "eval.jsonl"), [
        {"env_steps": step, "step": step // 4, "task": task, "num_episodes": 2,
         "mean_return": (step / 1000 + offset) if task == "breakout" else (-21.0 + step / 3000 + offset)}
        for step in (1500, 3000, 4500, 6000, 7500, 9000) for task in ("breakout", "pong")])
  out = str(tmp_path / "out")
  figures = _figures_of_report([str(tmp_path / "runs"), "--out", out, "--reps", "100"], monkeypatch, capsys)
  with open(os.path.join(out, "summary.json")) as handle:
    continual = json.load(handle)["continual"]
  assert continual["schedule"]["sequence"] == ["breakout", "pong", "breakout"]  # (the evaluation at 9000 ends phase 2)
  assert continual["schedule"]["switches"] == [3000, 6000]
  pong = continual["curves"]["pong"]["layer_norm"]
  assert pong["env_steps"] == [1500, 3000, 4500, 6000, 7500, 9000] and pong["mean"][2] == pytest.approx(-21.0 + 1.5 + 1.0)
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert "2 runs, 2 variants, task sequence breakout → pong → breakout (a switch every 3,000 env steps)" in report
  assert "No training curve for pong" in report and "![continual tasks](continual.png)" in report
  # One table for all variants: each phase's first evaluation of each task (at 1,500, 3,000 and 6,000).
  assert "| dqn | 1.5 | -20.5 | 3 | -20 | 6 | -19 |" in report
  assert "| layer_norm | 2.5 | -19.5 | 4 | -19 | 7 | -18 |" in report
  fig = figures["continual.png"]
  assert [ax.get_title() for ax in fig.axes] == ["breakout", "pong"]
  assert all(len(ax.get_lines()) >= 2 for ax in fig.axes)  # a curve per variant on each task's panel
  assert "dashed: a task switch" in _legend_text(fig)


def test_a_sweeps_runs_are_named_by_its_variants_set_against_the_base_and_drawn_each_its_own_way(tmp_path, monkeypatch,
                                                                                               capsys):
  # Twelve variants as sweep.py lays them out (ROOT/<variant>/<game>/seed<seed>): more than tab10 has colours, and
  # more than the four variants whose every pair the report gives (66 pairs).
  names = [f"v{i:02d}" for i in range(12)]
  for i, name in enumerate(names):
    make_run(str(tmp_path / "sweep" / name / "pong" / "seed0"), "pong", 0, -20.0 + i % 3,
             agent={"layer_norm": False, "weight_decay": i * 1e-5}, finished=True)
  out = str(tmp_path / "out")
  figures = _figures_of_report([str(tmp_path / "sweep"), "--out", out, "--reps", "100", "--last-episodes", "2"],
                               monkeypatch, capsys)
  with open(os.path.join(out, "summary.json")) as handle:
    summary = json.load(handle)
  assert [v["name"] for v in summary["variants"]] == names  # the base (no departure) first
  assert summary["variants"][0]["departures"] == {} and summary["variants"][3]["departures"] == {"agent.weight_decay": pytest.approx(3e-5)}
  assert [(p["x"], p["y"]) for p in summary["probability_of_improvement"]] == [(name, "v00") for name in names[1:]]
  # Every variant's line is drawn its own way (colour and line style), named in the legend.
  [ax] = figures["learning_curves.png"].axes
  styles = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
  assert len(styles) == 12 and len(set(styles)) == 12
  # The same runs elsewhere than under a sweep's layout are named by their configs.
  for name in names:
    shutil.copytree(tmp_path / "sweep" / name / "pong" / "seed0", tmp_path / "flat" / name)
  code, _, _ = run_compare([str(tmp_path / "flat"), "--out", str(tmp_path / "flat_out"), "--reps", "100"], capsys)
  assert code == 0
  with open(os.path.join(tmp_path, "flat_out", "summary.json")) as handle:
    flat_names = [v["name"] for v in json.load(handle)["variants"]]
  assert flat_names[0] == "dqn" and set(flat_names[1:]) == {f"wd={format_value(i * 1e-5)}" for i in range(1, 12)}


def test_the_terminal_runs_the_longer_list_down_the_page():
  from rich.console import Console
  from reports import terminal

  def games_table_rows(num_variants: int, num_games: int) -> list[str]:
    variants = [{"name": f"variant{i}"} for i in range(num_variants)]
    games = {f"game{g}": {v["name"]: {"mean": {"value": 10.0 * g + i, "ci": None}} for i, v in enumerate(variants)}
             for g in range(num_games)}
    console = Console(width=200, record=True)
    console.print(terminal.games_table({"variants": variants, "games": games}))
    return [line for line in console.export_text().splitlines() if line.startswith("│")]

  rows = games_table_rows(num_variants=5, num_games=2)  # a row per variant, a column per game
  assert len(rows) == 5 and [cell.strip() for cell in rows[3].split("│")[1:4]] == ["variant3", "3", "13"]
  rows = games_table_rows(num_variants=2, num_games=5)  # a row per game
  assert len(rows) == 5 and [cell.strip() for cell in rows[4].split("│")[1:4]] == ["game4", "40", "41"]


def test_the_report_names_the_code_each_run_ran_and_says_when_the_runs_differ_in_it(tmp_path, capsys):
  commits = {"a": ["1" * 40], "b": ["1" * 40, "2" * 40]}  # b resumed at another commit
  for name, lives in commits.items():
    run_dir = str(tmp_path / "runs" / name)
    make_run(run_dir, "pong", 0, -20.0, agent={"layer_norm": name == "b"}, finished=True)
    write_rows(os.path.join(run_dir, "metrics", "lives.jsonl"), [
        {"started_update": 10 * i, "started_env_steps": 40 * i, "resumed": i > 0, "commit": commit, "dirty": False}
        for i, commit in enumerate(lives)])
  make_run(str(tmp_path / "runs" / "old"), "pong", 0, -20.0, agent={"weight_decay": 1e-3}, finished=True)
  out = str(tmp_path / "out")
  code, _, _ = run_compare([str(tmp_path / "runs"), "--out", out, "--reps", "100"], capsys)
  assert code == 0
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert ("**Code**: the runs ran more than one version of the code, or code no commit names: 1111111 (2 runs), "
          "2222222 (1 run), not recorded (1 run: from before metrics/lives.jsonl).") in report
  runs = {line.split(" | ")[0].lstrip("| "): line for line in report.split("## Runs")[1].splitlines() if "| " in line}
  assert runs[os.path.join(tmp_path, "runs", "b")].endswith("| 1111111 → 2222222 |")
  assert runs[os.path.join(tmp_path, "runs", "old")].endswith("| - |")
  # One commit, clean: said once, plainly.
  code, _, _ = run_compare([os.path.join(tmp_path, "runs", "a"), "--out", str(tmp_path / "one"), "--reps", "100"], capsys)
  with open(os.path.join(tmp_path, "one", "report.md")) as handle:
    assert "\nCode: 1111111 (1 run).\n" in handle.read()
