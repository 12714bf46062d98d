"""A comparison of agent variants: per-game scores and curves, rliable aggregates, plasticity; report.md + summary.json + PNGs.

`build_summary` computes every number (a JSON-ready dict, the content of
summary.json); `write_report` draws the figures and writes report.md from it.
Scores: per run, the mean return of its last evaluation (metrics/eval.jsonl), or of
its last `last_episodes` training episodes when it has none. Aggregates over games
use human-normalised scores (Mnih et al. 2015) with stratified bootstrap intervals
and probabilities of improvement (Agarwal et al. 2021).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
from typing import Any, Optional, Sequence

import numpy as np

from common.metrics import read_rows
from common.run_dir import PROBE_STREAM, RunDir
from envs.scores import human_normalized_score, reference_scores
from reports import dqn_zoo, plots, stats
from common.run_scores import LAST_EPISODES, episode_returns, final_score
from reports.runs import (Run, SkippedRun, Variant, binned_curve, departures_text, format_number, interpolated_curve,
                          run_code, run_tasks, task_evaluations, task_phase_scores)

# Scalar columns of metrics/plasticity.jsonl drawn over training (per-layer keys are left to the JSONL).
PLASTICITY_METRICS = (
    "target_fit_final_loss", "target_fit_baseline", "hessian_max_eigenvalue", "grad_cov_mean_offdiag",
    "grad_cov_frac_negative", "srank", "effective_rank", "dormant_frac_tau_0", "dormant_frac_tau_0025",
    "dormant_frac_tau_0025_layer_mean", "param_norm",
)
NO_INTERVAL = "no interval (one run per game)"


@dataclasses.dataclass(frozen=True)
class Options:
  reps: int = stats.DEFAULT_REPS
  """Bootstrap replicates for every interval."""
  seed: int = stats.DEFAULT_SEED
  """Seed of the bootstrap (fixed: the same runs give the same report)."""
  confidence: float = stats.DEFAULT_CONFIDENCE
  last_episodes: int = LAST_EPISODES
  """Training episodes averaged for a run's final score when it has no evaluation."""
  curve_points: int = 50
  """Bins of the common env-steps grid of the learning curves (and points of the plasticity curves)."""


def _interval(statistic, *score_sets, options: Options) -> dict:
  if stats.has_spread(*score_sets):
    interval = stats.stratified_bootstrap_ci(statistic, *score_sets, reps=options.reps, seed=options.seed,
                                             confidence=options.confidence)
  else:
    interval = stats.Interval(float(statistic(*score_sets)))
  return interval.to_dict()


def _finite_or_none(values: np.ndarray) -> list[Optional[float]]:
  return [float(v) if np.isfinite(v) else None for v in np.asarray(values, float)]


def build_summary(runs: Sequence[Run], variants: Sequence[Variant], options: Options = Options(),
                  skipped: Sequence[SkippedRun] = ()) -> dict[str, Any]:
  """Every number of the report, JSON-ready (NaN written as null); `skipped`: the runs that could not be read."""
  names = [variant.name for variant in variants]
  games = sorted({run.game for run in runs})
  run_rows, raw = _score_runs(runs, variants, options)
  normalized_games = [game for game in games if game in reference_scores()]
  return {
      "settings": dataclasses.asdict(options),
      "variants": [{
          "name": v.name, "fields": {k: list(val) if isinstance(val, tuple) else val for k, val in v.fields.items()},
          "departures": {k: list(val) if isinstance(val, tuple) else val for k, val in v.departures.items()},
          "config": RunDir(v.runs[0].run_dir).config_path,
          "runs": len(v.runs), "games": sorted({r.game for r in v.runs}), "seeds": sorted({r.seed for r in v.runs}),
          "in_progress": sum(r.in_progress for r in v.runs),
      } for v in variants],
      "runs": run_rows,
      "skipped_runs": [{"run_dir": run.run_dir, "reason": run.reason} for run in skipped],
      "games": _per_game(raw, names, games, options),
      "aggregate": {"games": normalized_games, "skipped_games": [g for g in games if g not in reference_scores()],
                    "variants": _aggregates(raw, names, normalized_games, options)},
      "probability_of_improvement": _improvements(raw, names, options),
      "curves": learning_curves(variants, options),
      "continual": continual_summary(variants),
      "dqn_zoo": {run.run_dir: rows for run in runs if (rows := dqn_zoo.iteration_rows(run))},
      "plasticity": plasticity_curves(variants, options),
  }


def _score_runs(runs: Sequence[Run], variants: Sequence[Variant], options: Options) -> tuple[list[dict], dict]:
  """(one row per run, in variant order; raw: variant -> game -> [(score, in progress)] of the scored runs)."""
  variant_of = {run.run_dir: variant.name for variant in variants for run in variant.runs}
  names = [variant.name for variant in variants]
  run_rows, raw = [], {}
  for run in sorted(runs, key=lambda r: (names.index(variant_of[r.run_dir]), r.game, r.seed, r.run_dir)):
    # A continual run is scored on its first task (its other tasks are in the continual section).
    score = final_score(run.run_dir, options.last_episodes, run.game if run.config.task_schedule else None)
    hns = None
    if score.score is not None and run.game in reference_scores():
      hns = human_normalized_score(run.game, score.score)
    run_rows.append({
        "run_dir": run.run_dir, "variant": variant_of[run.run_dir], "game": run.game, "seed": run.seed,
        "finished": run.progress.finished, "checkpoint_env_steps": run.progress.env_steps,
        "checkpoints": len(run.progress.checkpoint_steps), "score": score.score, "score_source": score.source,
        "score_env_steps": score.env_steps, "score_episodes": score.episodes, "human_normalized_score": hns,
        "rows_left_out": run.left_out, "code": run_code(run.run_dir),
    })
    if score.score is not None:
      raw.setdefault(variant_of[run.run_dir], {}).setdefault(run.game, []).append((score.score, run.in_progress))
  return run_rows, raw


def _per_game(raw: dict, names: Sequence[str], games: Sequence[str], options: Options) -> dict:
  """game -> variant -> its runs' scores, their mean and (with reference scores) human-normalised mean."""
  per_game = {}
  for game in games:
    per_game[game] = {}
    for name in names:
      entries = raw.get(name, {}).get(game)
      if not entries:
        continue
      scores = {game: np.array([s for s, _ in entries])}
      row = {"runs": len(entries), "scores": [s for s, _ in entries], "mean": _interval(stats.aggregate_mean, scores, options=options)}
      if game in reference_scores():
        normalized = {game: np.array([human_normalized_score(game, s) for s, _ in entries])}
        row["human_normalized_mean"] = _interval(stats.aggregate_mean, normalized, options=options)
      per_game[game][name] = row
  return per_game


def _aggregates(raw: dict, names: Sequence[str], normalized_games: Sequence[str], options: Options) -> dict:
  """variant -> mean, median and IQM of human-normalised scores over the games with reference scores."""
  normalized = {
      name: {game: np.array([human_normalized_score(game, s) for s, _ in raw[name][game]])
             for game in normalized_games if game in raw.get(name, {})}
      for name in names
  }
  aggregate = {}
  for name in names:
    if not normalized[name]:
      continue
    # rliable's score matrix has as many runs in every game: each game's first runs (by seed) when counts differ.
    even, runs_per_game = stats.equal_runs(normalized[name])
    aggregate[name] = {metric: _interval(fn, even, options=options) for metric, fn in stats.AGGREGATES.items()} | {
        "games": sorted(even), "runs": int(sum(len(v) for v in even.values())), "runs_per_game": runs_per_game,
        "runs_left_out": int(sum(len(v) for v in normalized[name].values())) - runs_per_game * len(even),
        "intervals": stats.has_spread(even)}
  return aggregate


ALL_PAIRS_UP_TO = 4  # variants; with more, each is set against the base variant (19 variants would be 171 pairs)


def improvement_pairs(num_variants: int) -> list[tuple[int, int]]:
  """(i, j): the pairs of variants (by index, base first) whose P(variant j > variant i) the report gives: every pair
  for up to ALL_PAIRS_UP_TO variants, else each variant against the first."""
  if num_variants <= ALL_PAIRS_UP_TO:
    return list(itertools.combinations(range(num_variants), 2))
  return [(0, j) for j in range(1, num_variants)]


def _improvements(raw: dict, names: Sequence[str], options: Options) -> list[dict]:
  """P(X > Y) of the pairs of variants `improvement_pairs` names, on the games both have scored runs of."""
  improvement = []
  raw_arrays = {name: {game: np.array([s for s, _ in entries]) for game, entries in raw.get(name, {}).items()} for name in names}
  for i, j in improvement_pairs(len(names)):
    x, y = names[j], names[i]  # P(later variant > earlier one): the base variant comes first
    common = sorted(set(raw_arrays[x]) & set(raw_arrays[y]))
    if not common:
      continue
    xs, _ = stats.equal_runs({g: raw_arrays[x][g] for g in common})
    ys, _ = stats.equal_runs({g: raw_arrays[y][g] for g in common})
    improvement.append({"x": x, "y": y, "games": common, "intervals": stats.has_spread(xs, ys),
                        **_interval(stats.probability_of_improvement, xs, ys, options=options)})
  return improvement


def learning_curves(variants: Sequence[Variant], options: Options) -> dict[str, dict[str, dict]]:
  """game -> variant -> training returns binned on a common env-steps grid: mean over runs and its bootstrap band.
  A continual run adds a curve to each game it played, from that game's episodes only."""
  runs = [run for v in variants for run in v.runs]
  episodes = {(run.run_dir, game): episode_returns(run.run_dir, game if run.config.task_schedule else None)
              for run in runs for game in run_tasks(run)}
  games = sorted({game for run in runs for game in run_tasks(run)})
  curves = {}
  for game in games:
    game_runs = [run for run in runs if game in run_tasks(run) and len(episodes[(run.run_dir, game)][0])]
    if not game_runs:
      continue
    max_steps = max(int(episodes[(run.run_dir, game)][0].max()) for run in game_runs)
    edges = np.linspace(0, max(max_steps, 1), options.curve_points + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    curves[game] = {}
    for v in variants:
      rows = [binned_curve(*episodes[(run.run_dir, game)], edges) for run in v.runs if run in game_runs]
      if not rows:
        continue
      mean, low, high = stats.bootstrap_band(np.stack(rows), reps=options.reps, seed=options.seed,
                                             confidence=options.confidence)
      curves[game][v.name] = {"runs": len(rows), "env_steps": centres.tolist(), "mean": _finite_or_none(mean),
                              "low": _finite_or_none(low), "high": _finite_or_none(high)}
  return curves


def continual_summary(variants: Sequence[Variant]) -> dict[str, Any]:
  """The continual runs' tasks, in one structure ({} when no run has a task schedule):

  schedule: the first continual run's (games, switch_every_env_steps, `sequence`: the game of each phase up to the
  furthest run's env steps, `switches`: their job env steps), `same_schedule`: whether every continual run has it;
  variants: variant -> {"phases": [{"phase", "played", "env_steps_from", "scores": {task: mean or None}, "runs"}]},
  each task's score after each switch (the phase's first evaluation of it), mean over the variant's runs;
  curves: task -> variant -> {"env_steps", "mean", "runs"}: every evaluation of the task on the job's env-step axis,
  mean over the variant's runs that evaluated at that step.
  """
  continual = {v.name: [run for run in v.runs if run.config.task_schedule is not None] for v in variants}
  continual = {name: runs for name, runs in continual.items() if runs}
  if not continual:
    return {}
  runs = [run for runs in continual.values() for run in runs]
  schedule = runs[0].config.task_schedule
  evals = {run.run_dir: task_evaluations(run.run_dir) for run in runs}  # read once: the curves and the phases
  phases = range(schedule.phase_at(max(run.config.total_env_steps for run in runs) - 1) + 1)  # the budgets' phases
  out = {"tasks": list(schedule.distinct_games),
         "schedule": {"games": list(schedule.games), "switch_every_env_steps": schedule.switch_every_env_steps,
                      "sequence": [schedule.game_at(p * schedule.switch_every_env_steps) for p in phases],
                      "switches": [p * schedule.switch_every_env_steps for p in phases if p]},
         "same_schedule": all(run.config.task_schedule == schedule for run in runs),
         "variants": {}, "curves": {task: {} for task in schedule.distinct_games}}
  for name, variant_runs in continual.items():
    out["variants"][name] = {"phases": _phase_rows(variant_runs, evals)}
    for task in out["tasks"]:
      by_step: dict[int, list[float]] = {}
      for run in variant_runs:
        for row in evals[run.run_dir]:
          if row["task"] == task:
            by_step.setdefault(int(row["env_steps"]), []).append(float(row["mean_return"]))
      if by_step:
        steps = sorted(by_step)
        out["curves"][task][name] = {"env_steps": steps, "mean": [float(np.mean(by_step[t])) for t in steps],
                                     "runs": len(variant_runs)}
  return out


def _phase_rows(runs: Sequence[Run], evals: dict[str, list[dict]]) -> list[dict]:
  """Each task's score after each switch, mean over `runs` (continual runs of one variant; `evals`: run directory ->
  its `task_evaluations`)."""
  schedule = runs[0].config.task_schedule
  per_run = [task_phase_scores(run, evals[run.run_dir]) for run in runs]
  rows = []
  for phase in sorted({phase for scores in per_run for phase in scores}):
    scores = {}
    for task in schedule.distinct_games:
      values = [scores_of[phase][task] for scores_of in per_run if task in scores_of.get(phase, {})]
      scores[task] = float(np.mean(values)) if values else None
    rows.append({"phase": phase, "played": schedule.game_at(phase * schedule.switch_every_env_steps),
                 "env_steps_from": phase * schedule.switch_every_env_steps, "scores": scores,
                 "runs": sum(phase in scores_of for scores_of in per_run)})
  return rows


def _sequence_text(continual: dict) -> str:
  """`breakout → pong → breakout (a switch every 3,000 env steps)`."""
  schedule = continual["schedule"]
  return (" → ".join(schedule["sequence"]) + f" (a switch every {schedule['switch_every_env_steps']:,} env steps)")


def _continual_section(continual: dict, names: list[str], out_dir: str, written: list[str]) -> list[str]:
  """Every task's evaluations on the job's env-step axis (one figure) and every variant's after-switch scores (one
  table); appends the PNG to `written`."""
  if not continual:
    return []
  tasks, rows_of = continual["tasks"], continual["variants"]
  md = ["## Continual tasks", "", f"Task sequence: {_sequence_text(continual)}."
        + ("" if continual["same_schedule"] else " **Not every run has this schedule**: their phases are their own."),
        ""]
  if any(continual["curves"].values()):
    written.append(plots.plot_continual(continual["curves"], names, continual["schedule"],
                                        os.path.join(out_dir, "continual.png")))
    md += ["Each task's evaluation score at every evaluation, on the job's env-step axis (mean over the variant's "
           "runs; dashed lines: the switches; shaded: the phases in which the task is played).", "",
           "![continual tasks](continual.png)", ""]
  phases = sorted({row["phase"] for entry in rows_of.values() for row in entry["phases"]})
  played = {row["phase"]: row["played"] for entry in rows_of.values() for row in entry["phases"]}
  md += ["Each task's score after each switch: the phase's first evaluation of every task (metrics/eval.jsonl), mean "
         "over the variant's runs. A drop in a task's column after it stops being played is forgetting; its score "
         "when it comes back, how fast it is relearned.", "",
         "| variant | " + " | ".join(f"phase {p} ({played[p]}): {task}" for p in phases for task in tasks) + " |",
         "|---|" + "---|" * (len(phases) * len(tasks))]
  for name in names:
    if name not in rows_of:
      continue
    by_phase = {row["phase"]: row["scores"] for row in rows_of[name]["phases"]}
    md.append(f"| {name} | " + " | ".join(format_number(by_phase.get(p, {}).get(task)) for p in phases for task in tasks) + " |")
  return md + [""]


def plasticity_curves(variants: Sequence[Variant], options: Options) -> Optional[dict[str, Any]]:
  """metric -> variant -> mean over runs of the metric at the variant's probe env steps (each run interpolated there;
  NaN where any run has not measured), each run's own probes, and the mean of each run's last value; None when no
  run has metrics/plasticity.jsonl."""
  rows = {run.run_dir: read_rows(RunDir(run.run_dir).stream_path(PROBE_STREAM))
          for v in variants for run in v.runs}
  rows = {run_dir: [row for row in r if "env_steps" in row] for run_dir, r in rows.items()}
  if not any(rows.values()):
    return None
  metrics = [m for m in PLASTICITY_METRICS
             if any(isinstance(row.get(m), (int, float)) and not isinstance(row.get(m), bool) for r in rows.values() for row in r)]
  series: dict[str, dict] = {}
  for metric in metrics:
    series[metric] = {}
    for v in variants:
      measured, per_run = [], []
      for run in v.runs:
        points = [(row["env_steps"], row[metric]) for row in rows[run.run_dir]
                  if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]
        if points:
          measured.append(np.array(sorted(points), float).T)
          per_run.append({"seed": run.seed, "env_steps": measured[-1][0].tolist(), "values": measured[-1][1].tolist()})
      if not measured:
        continue
      # The variant's own probe points (its runs probe at about the same env steps); many: an even grid.
      grid = np.unique(np.concatenate([steps for steps, _ in measured]))
      if len(grid) > 4 * options.curve_points:
        grid = np.linspace(grid[0], grid[-1], options.curve_points)
      curves = [interpolated_curve(steps, values, grid) for steps, values in measured]
      last = [values[np.argmax(steps)] for steps, values in measured]
      stacked = np.stack(curves)
      # The mean only where every run has a value: elsewhere it would join different seeds into one line.
      mean = np.where(np.isfinite(stacked).all(axis=0), np.mean(stacked, axis=0), np.nan)
      series[metric][v.name] = {"runs": len(curves), "env_steps": grid.tolist(), "mean": _finite_or_none(mean),
                                "last_mean": float(np.mean(last)), "per_run": per_run}
  return {"runs_with_file": sum(bool(r) for r in rows.values()), "metrics": series}


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _with_ci(entry: dict) -> str:
  if entry["ci"] is None:
    return f"{format_number(entry['value'])} ({NO_INTERVAL})"
  return f"{format_number(entry['value'])} [{format_number(entry['ci'][0])}, {format_number(entry['ci'][1])}]"


def _json_safe(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.generic):
    return _json_safe(value.item())
  return value


def _left_out_lines(skipped: list[dict], runs: list[dict]) -> list[str]:
  """What the report could not use, said before any number: runs it could not read, rows the scores leave out."""
  md = []
  if skipped:
    md += [f"**{len(skipped)} run(s) left out**: they could not be read.", ""]
    md += [f"- {s['run_dir']}: {s['reason']}" for s in skipped] + [""]
  damaged = [r for r in runs if r.get("rows_left_out")]
  if damaged:
    md += ["**Rows left out of the scores** (not finite numbers: the learner never writes such a row):", ""]
    md += [f"- {r['run_dir']}: " + ", ".join(f"{count} {what}" for what, count in r["rows_left_out"].items())
           for r in damaged] + [""]
  return md


def _variants_section(variants: list[dict], out_dir: str, written: list[str]) -> list[str]:
  """Each variant's departures from the reference values, and a copy of one of its runs' config.json (every field)
  in `out_dir/configs/`, linked; appends the copies to `written`."""
  md = ["## Variants", "", "Each variant by the config fields in which it departs from the others' common value (the "
        "value most variants share: a variant with none is the baseline, `-`); fields not listed are the same in every "
        "run, and game, seed and how a run ran are ignored. Every field: the config of one of its runs.", "",
        "| variant | departs in | runs | games | seeds | in progress | config |", "|---|---|---|---|---|---|---|"]
  for v in variants:
    fields = departures_text(v["departures"]) or "- (baseline)"
    config = os.path.join("configs", re.sub(r"[^A-Za-z0-9._=+-]", "_", v["name"]) + ".json")
    if os.path.exists(v["config"]):
      os.makedirs(os.path.join(out_dir, "configs"), exist_ok=True)
      written.append(shutil.copyfile(v["config"], os.path.join(out_dir, config)))
      link = f"[config.json]({config})"
    else:
      link = "-"
    md.append(f"| {v['name']} | {fields} | {v['runs']} | {', '.join(v['games'])} | {', '.join(map(str, v['seeds']))} | "
              f"{v['in_progress']} | {link} |")
  md.append("")
  return md


def _runs_section(runs: list[dict], options: dict) -> list[str]:
  sources = {r["score_source"] for r in runs}
  md = ["## Runs", "", "Final score: " + "; ".join(filter(None, [
      "`eval` = mean return of the run's last evaluation (metrics/eval.jsonl; on a budget of frames, DQN Zoo's "
      "`eval_episode_return`)" if "eval" in sources else "",
      f"`train` = mean return of its last {options['last_episodes']} training episodes (metrics/episodes.jsonl; "
      "the run has no evaluation)" if "train" in sources else "",
      "`none` = no finished episode yet (left out of the scores)" if "none" in sources else ""])) + ".", "",
      "| run | variant | game | seed | status | env steps (checkpoint) | final score | source | human-normalised | code |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for r in runs:
    status = "finished" if r["finished"] else ("in progress (no checkpoint yet)" if not r["checkpoints"] else "in progress")
    steps = "-" if r["checkpoint_env_steps"] is None else f"{r['checkpoint_env_steps']:,}"
    source = r["score_source"] if r["score_source"] != "train" else f"train (last {r['score_episodes']})"
    md.append(f"| {r['run_dir']} | {r['variant']} | {r['game']} | {r['seed']} | {status} | {steps} | "
              f"{format_number(r['score'])} | {source} | {format_number(r['human_normalized_score'])} | {_code_text(r['code'])} |")
  md.append("")
  return md


def _code_text(labels: list[str]) -> str:
  """A run's lives' code, oldest first (`8d4c32b → a865a73`), or `-` when not recorded."""
  return " → ".join(labels) or "-"


def _code_lines(runs: list[dict]) -> list[str]:
  """What code the runs ran, said once at the top: one commit, or each commit with its runs' count, in bold when
  they differ (a comparison across code changes is worth a look at what changed)."""
  counts = collections.Counter(label for r in runs for label in dict.fromkeys(r["code"]))
  unrecorded = sum(not r["code"] for r in runs)
  parts = [f"{label} ({count} run{'s' * (count != 1)})" for label, count in counts.most_common()]
  if unrecorded:
    parts.append(f"not recorded ({unrecorded} run{'s' * (unrecorded != 1)}: from before metrics/lives.jsonl)")
  if len(counts) > 1 or any(label.endswith("+dirty") or label == "unknown" for label in counts):
    return [f"**Code**: the runs ran more than one version of the code, or code no commit names: {', '.join(parts)}. "
            "A run's lives are in the Runs table.", ""]
  return [f"Code: {', '.join(parts)}.", ""]


def _per_game_section(summary: dict, names: list[str], confidence: str, out_dir: str, written: list[str]) -> list[str]:
  """Learning curves and each game's final scores; appends the PNGs it draws to `written`."""
  md = ["## Per game", ""]
  if summary["curves"]:
    path = plots.plot_learning_curves(summary["curves"], names, os.path.join(out_dir, "learning_curves.png"),
                                      f"training episode returns, mean over runs, {confidence} bootstrap band")
    written.append(path)
    md += [f"Learning curves: training episode returns binned on {summary['settings']['curve_points']} env-step bins "
           f"per game, mean over runs, {confidence} bootstrap band over runs (none where a bin has one run).", "",
           "![learning curves](learning_curves.png)", ""]
  untrained = [task for task in summary.get("continual", {}).get("tasks", []) if task not in summary["curves"]]
  if untrained:
    md += [f"No training curve for {', '.join(untrained)}: none of its training episodes ended (an Atari game can "
           "outlast a short phase); its evaluations are in the continual section.", ""]
  flags = {(r["variant"], r["game"]): [] for r in summary["runs"]}  # (score, in progress) of each scored run
  for r in summary["runs"]:
    if r["score"] is not None:
      flags[(r["variant"], r["game"])].append((r["score"], not r["finished"]))
  scores_for_plot = {}
  for game, by_variant in summary["games"].items():
    md += [f"### {game}", "", "| variant | runs | final scores | mean score | human-normalised mean |", "|---|---|---|---|---|"]
    for name, row in by_variant.items():
      hns = _with_ci(row["human_normalized_mean"]) if "human_normalized_mean" in row else "- (no reference scores)"
      md.append(f"| {name} | {row['runs']} | {', '.join(format_number(s) for s in row['scores'])} | {_with_ci(row['mean'])} | {hns} |")
    md.append("")
    scores_for_plot[game] = {name: flags[(name, game)] for name in by_variant}
  if scores_for_plot:
    written.append(plots.plot_final_scores(scores_for_plot, names, os.path.join(out_dir, "final_scores.png")))
    md += ["![final scores](final_scores.png)", "", "Hollow dots: runs in progress.", ""]
  return md


def _aggregate_section(aggregate: dict, names: list[str], confidence: str, out_dir: str, written: list[str]) -> list[str]:
  """Mean, median and IQM of human-normalised scores; appends the PNG it draws to `written`."""
  md = ["## Aggregate over games (human-normalised)", ""]
  if aggregate["skipped_games"]:
    md += [f"Left out (no random/human reference score): {', '.join(aggregate['skipped_games'])}.", ""]
  if len({tuple(row["games"]) for row in aggregate["variants"].values()}) > 1:
    md += ["**The variants cover different games**: compare their aggregates with care (see the games column).", ""]
  if not aggregate["variants"]:
    return md + ["No variant has a scored run on a game with reference scores.", ""]
  md += ["Human-normalised score = (score - random) / (human - random). Mean and median over games of each game's "
         "mean over runs; IQM over all runs of all games (the middle 50%, scipy trim_mean 0.25).", "",
         "| variant | games | runs | mean | median | IQM |", "|---|---|---|---|---|---|"]
  for name, row in aggregate["variants"].items():
    md.append(f"| {name} | {len(row['games'])} | {row['runs']} | {_with_ci(row['mean'])} | {_with_ci(row['median'])} | "
              f"{_with_ci(row['iqm'])} |")
  md.append("")
  written.append(plots.plot_aggregates(aggregate["variants"], names, os.path.join(out_dir, "aggregate.png"),
                                       f"human-normalised scores, {confidence} stratified bootstrap intervals",
                                       confidence))
  return md + ["![aggregate](aggregate.png)", ""]


def _improvement_section(pairs: list[dict], names: list[str], confidence: str, out_dir: str,
                         written: list[str]) -> list[str]:
  """P(X > Y) of each pair of variants; appends the PNG it draws to `written`."""
  md = ["## Probability of improvement", ""]
  if not pairs:
    return md + ["Needs two variants with runs on a common game.", ""]
  against = (f"Each variant against {names[0]}, the base variant (every pair is given for up to {ALL_PAIRS_UP_TO} "
             "variants). " if len(names) > ALL_PAIRS_UP_TO else "")
  md += [against + "P(X > Y): the chance that a run of X scores higher than a run of Y on the same game (ties count "
         "1/2), averaged over the games both have (the Mann-Whitney U statistic / (n_X n_Y); Agarwal et al. 2021).", "",
         "| X | Y | games | P(X > Y) |", "|---|---|---|---|"]
  for p in pairs:
    md.append(f"| {p['x']} | {p['y']} | {len(p['games'])} | {_with_ci(p)} |")
  md.append("")
  written.append(plots.plot_probability_of_improvement(pairs, names, os.path.join(out_dir, "probability_of_improvement.png"),
                                                      confidence))
  return md + ["![probability of improvement](probability_of_improvement.png)", ""]


def _plasticity_section(plasticity: Optional[dict], names: list[str], out_dir: str, written: list[str]) -> list[str]:
  """Plasticity metrics over training and their last values; appends the PNG it draws to `written`."""
  md = ["## Plasticity over training", ""]
  if plasticity is None:
    return md + ["Skipped: no run has metrics/plasticity.jsonl.", ""]
  if not plasticity["metrics"]:
    return md + ["Skipped: metrics/plasticity.jsonl has none of the known metric columns.", ""]
  written.append(plots.plot_plasticity(plasticity["metrics"], names, os.path.join(out_dir, "plasticity.png"),
                                       "mean over runs (all games) per variant"))
  md += [f"From metrics/plasticity.jsonl of {plasticity['runs_with_file']} run(s): thin lines are single runs; the "
         "thick line is the mean over the variant's runs at the env steps inside every run's probed range (each run "
         "interpolated linearly between its own probes).", "",
         "![plasticity](plasticity.png)", "",
         "Last value (mean over runs of each run's last row):", "",
         "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for metric, by_variant in plasticity["metrics"].items():
    md.append(f"| {metric} | " + " | ".join(format_number(by_variant[n]["last_mean"]) if n in by_variant else "-" for n in names) + " |")
  md.append("")
  return md


def write_report(summary: dict, out_dir: str, command: Optional[str] = None) -> list[str]:
  """Draws the PNGs and writes report.md and summary.json into `out_dir`; returns the files written."""
  os.makedirs(out_dir, exist_ok=True)
  names = [v["name"] for v in summary["variants"]]
  options = summary["settings"]
  confidence = f"{100 * options['confidence']:g}%"
  written, md = [], []
  any_interval = any(v["intervals"] for v in summary["aggregate"]["variants"].values()) or any(
      p["intervals"] for p in summary["probability_of_improvement"])

  md += ["# Comparison of agent variants", ""]
  if command:
    md += [f"`{command}`", ""]
  runs = summary["runs"]
  in_progress = [r for r in runs if not r["finished"]]
  continual = summary.get("continual", {})
  covers = (f"task sequence {_sequence_text(continual)}" if continual and continual["same_schedule"]
            and all(r["game"] == continual["schedule"]["games"][0] for r in runs)
            else f"{len(summary['games'])} game{'s' * (len(summary['games']) != 1)}")
  md += [f"{len(runs)} runs, {len(names)} variants, {covers}. "
         f"Intervals: {confidence} percentile bootstrap, {options['reps']} replicates, seed {options['seed']}, "
         "resampling runs within each game (stratified; Agarwal et al. 2021).", ""]
  if not any_interval:
    md += ["**No intervals**: every variant has one run per game (one seed); a bootstrap interval needs at least two "
           "runs of a game, so only point estimates are given.", ""]
  if in_progress:
    md += [f"**{len(in_progress)} run(s) in progress** (not finished: their newest checkpoint is not final, or they "
           "have none yet); they are included with the data they have so far and marked *in progress* below.", ""]

  md += _code_lines(runs)
  md += _left_out_lines(summary.get("skipped_runs", []), runs)
  md += _variants_section(summary["variants"], out_dir, written)
  md += _runs_section(runs, options)
  md += _per_game_section(summary, names, confidence, out_dir, written)
  md += _aggregate_section(summary["aggregate"], names, confidence, out_dir, written)
  md += _improvement_section(summary["probability_of_improvement"], names, confidence, out_dir, written)
  md += _continual_section(summary.get("continual", {}), names, out_dir, written)
  md += dqn_zoo.section(summary.get("dqn_zoo", {}), {r["run_dir"]: r["variant"] for r in runs}, out_dir, written)
  md += _plasticity_section(summary["plasticity"], names, out_dir, written)

  report_path = os.path.join(out_dir, "report.md")
  with open(report_path, "w", encoding="utf-8") as handle:
    handle.write("\n".join(md))
  summary_path = os.path.join(out_dir, "summary.json")
  with open(summary_path, "w", encoding="utf-8") as handle:
    json.dump(_json_safe(summary), handle, indent=1)
    handle.write("\n")
  return [report_path, summary_path, *written]
