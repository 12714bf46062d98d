"""PNG figures of a comparison (matplotlib, Agg backend): curves, final scores, aggregates, P(X > Y), plasticity.

Each function takes plain arrays and dicts (what reports/report.py computes) and
writes one file; a variant keeps its colour across figures (its index in `variants`).
A figure of many series has one legend, outside its axes (`_legend_outside`), and
every figure says on itself what its marks are (a point estimate, an interval and
its kind, how many runs).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import numpy as np


def _pyplot():
  import matplotlib  # only when a report draws its figures

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after the backend is chosen

  return plt


def _artists():
  """matplotlib's Line2D and Patch, for legend entries that say what a figure's marks are."""
  _pyplot()
  from matplotlib.lines import Line2D  # matplotlib loads only when a report draws its figures
  from matplotlib.patches import Patch

  return Line2D, Patch


def _colours(variants: Sequence[str]) -> dict[str, tuple]:
  """tab10's colours in turn (bars and dots, whose variant the axis names)."""
  plt = _pyplot()
  cycle = plt.get_cmap("tab10")
  return {name: cycle(i % 10) for i, name in enumerate(variants)}


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = (".", "s", "^", "x")


def _line_styles(variants: Sequence[str]) -> dict[str, dict]:
  """For lines, whose variant only the legend names: tab10's colours with a line style and marker per ten variants,
  so that no two of up to 40 variants are drawn alike."""
  colours = _colours(variants)
  return {name: {"color": colours[name], "linestyle": LINE_STYLES[(i // 10) % 4], "marker": MARKERS[(i // 10) % 4]}
          for i, name in enumerate(variants)}


def _label(name: str, width: int = 26) -> str:
  """A variant name broken into lines of about `width` characters at its `+` separators (tick labels, legends)."""
  lines, line = [], ""
  for part in name.split("+"):
    candidate = f"{line}+{part}" if line else part
    if line and len(candidate) > width:
      lines.append(line + "+")
      line = part
    else:
      line = candidate
  return "\n".join(lines + [line])


def _runs(count: int) -> str:
  return f"{count} run" if count == 1 else f"{count} runs"


def _grid(plt, num_panels: int, panel_w: float = 4.6, panel_h: float = 3.4, max_cols: int = 4):
  cols = min(num_panels, max_cols)
  rows = math.ceil(num_panels / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, panel_h * rows), squeeze=False)
  flat = list(axes.ravel())
  for ax in flat[num_panels:]:
    ax.set_visible(False)
  return fig, flat[:num_panels]


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": the legend outside the axes is in the file
  _pyplot().close(fig)
  return path


def _legend_outside(fig, axes, marks: Sequence = (), title: Optional[str] = None) -> None:
  """One legend for the whole figure, right of its axes: every labelled series of `axes` once (in order), then
  `marks`, artists that say what the figure's marks mean (a band, a thin line)."""
  handles: dict[str, Any] = {}
  for ax in axes:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, handle)
  for mark in marks:
    handles.setdefault(mark.get_label(), mark)
  if handles:
    fig.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
               title=title, title_fontsize=7, frameon=False)


def _interval_marks(confidence: str, kind: str, any_without: bool) -> list:
  """Legend entries for an interval plot: the bar, the point estimate, and (when some row has none) no bar."""
  Line2D, Patch = _artists()

  marks = [Patch(color="grey", alpha=0.6, label=f"bar: {confidence} {kind} interval"),
           Line2D([], [], color="black", linewidth=2, label="tick: point estimate")]
  if any_without:
    marks.append(Patch(color="none", label="tick alone: point estimate only (one run per game: no interval)"))
  return marks


def plot_learning_curves(curves: dict[str, dict[str, dict]], variants: Sequence[str], path: str, title: str) -> str:
  """A panel per game: each variant's mean training return against env steps, with its bootstrap band.

  curves: game -> variant -> {"env_steps": [P], "mean": [P], "low": [P], "high": [P]} (NaN: no data).
  """
  plt = _pyplot()
  styles = _line_styles(variants)
  fig, axes = _grid(plt, len(curves))
  for ax, (game, by_variant) in zip(axes, curves.items()):
    for name, curve in by_variant.items():
      x = np.asarray(curve["env_steps"], float)
      ax.plot(x, np.asarray(curve["mean"], float), color=styles[name]["color"], linestyle=styles[name]["linestyle"],
              label=f"{_label(name)} ({_runs(curve['runs'])})")
      low, high = np.asarray(curve["low"], float), np.asarray(curve["high"], float)
      if np.isfinite(low).any():
        ax.fill_between(x, low, high, color=styles[name]["color"], alpha=0.2, linewidth=0)
    ax.set_title(game)
    ax.set_xlabel("env steps (agent steps)")
    ax.set_ylabel("training episode return")
  _, Patch = _artists()

  _legend_outside(fig, axes, [Patch(color="grey", alpha=0.2, label="band: bootstrap interval over runs\n(none where a bin has one run)")],
                  title="line: mean over runs")
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def plot_final_scores(scores: dict[str, dict[str, list[tuple[float, bool]]]], variants: Sequence[str], path: str) -> str:
  """A panel per game: each run's final score as a dot (hollow: in progress), a bar at each variant's mean.

  scores: game -> variant -> [(score, in_progress), ...].
  """
  plt = _pyplot()
  colours = _colours(variants)
  fig, axes = _grid(plt, len(scores), panel_w=max(3.0, 0.9 * len(variants) + 1.6))
  for ax, (game, by_variant) in zip(axes, scores.items()):
    names = [name for name in variants if name in by_variant]
    for i, name in enumerate(names):
      values = np.array([score for score, _ in by_variant[name]], float)
      ax.bar(i, values.mean(), color=colours[name], alpha=0.35, width=0.6)
      for j, (score, in_progress) in enumerate(by_variant[name]):
        offset = (j - (len(values) - 1) / 2) * 0.08
        ax.scatter(i + offset, score, s=18, zorder=3, edgecolors=colours[name],
                   facecolors="none" if in_progress else colours[name])
    ax.set_xticks(range(len(names)), [_label(name) for name in names], rotation=30, ha="right", fontsize=7)
    ax.set_title(game)
    ax.set_ylabel("final score (game score)")
  Line2D, Patch = _artists()

  marks = [Line2D([], [], marker="o", linestyle="", color="grey", label="dot: one run"),
           Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="grey", label="hollow: run in progress"),
           Patch(color="grey", alpha=0.35, label="bar: mean over runs")]
  _legend_outside(fig, axes, marks)
  return _save(fig, path)


def plot_aggregates(aggregate: dict[str, dict[str, dict]], variants: Sequence[str], path: str, title: str,
                    confidence: str = "95%") -> str:
  """Mean, median and IQM of human-normalised scores per variant with their intervals (rliable's interval plot);
  each variant's tick label says its number of runs ("runs" of its entry, when there).

  aggregate: variant -> {"mean"|"median"|"iqm": {"value": v, "ci": [low, high] or None}, "runs": n}.
  """
  plt = _pyplot()
  colours = _colours(variants)
  metrics = ("mean", "median", "iqm")
  names = [name for name in variants if name in aggregate]
  fig, axes = plt.subplots(1, 3, figsize=(11, 0.5 * len(names) + 2.4), squeeze=False)  # room for slanted ticks
  for ax, metric in zip(axes[0], metrics):
    for i, name in enumerate(names):
      entry = aggregate[name][metric]
      if entry["ci"] is not None:
        ax.barh(i, entry["ci"][1] - entry["ci"][0], left=entry["ci"][0], height=0.6, color=colours[name], alpha=0.6)
      ax.plot([entry["value"]] * 2, [i - 0.3, i + 0.3], color="black", linewidth=2)
    labels = [_label(n) + (f"\n({_runs(aggregate[n]['runs'])})" if "runs" in aggregate[n] else "") for n in names]
    ax.set_yticks(range(len(names)), labels if metric == "mean" else [""] * len(names), fontsize=8)
    ax.set_title(metric.upper() if metric == "iqm" else metric.capitalize())
    ax.set_xlabel("human-normalised score")
    # Few, slanted x labels: three panels side by side leave each about 3 inches for its ticks.
    ax.locator_params(axis="x", nbins=4)
    ax.tick_params(axis="x", labelsize=8, labelrotation=30)
  without = any(aggregate[n][m]["ci"] is None for n in names for m in metrics)
  _legend_outside(fig, [], _interval_marks(confidence, "stratified bootstrap", without))
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def plot_probability_of_improvement(pairs: list[dict], variants: Sequence[str], path: str,
                                    confidence: str = "95%") -> str:
  """P(X > Y) for each listed pair with its interval; 0.5 is no difference.

  pairs: [{"x": name, "y": name, "value": p, "ci": [low, high] or None}, ...].
  """
  plt = _pyplot()
  colours = _colours(variants)
  fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(pairs) + 1.4))
  for i, pair in enumerate(pairs):
    if pair["ci"] is not None:
      ax.barh(i, pair["ci"][1] - pair["ci"][0], left=pair["ci"][0], height=0.6, color=colours[pair["x"]], alpha=0.6)
    ax.plot([pair["value"]] * 2, [i - 0.3, i + 0.3], color="black", linewidth=2)
  ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
  ax.set_yticks(range(len(pairs)), [f"P({_label(p['x'])} >\n{_label(p['y'])})" for p in pairs], fontsize=8)
  ax.set_xlim(-0.03, 1.03)  # a tick at 0 or 1 stays off the frame
  ax.set_xlabel("probability of improvement")
  Line2D, _ = _artists()

  without = any(pair["ci"] is None for pair in pairs)
  _legend_outside(fig, [], _interval_marks(confidence, "stratified bootstrap", without)
                  + [Line2D([], [], color="grey", linestyle=":", label="0.5: no difference")])
  return _save(fig, path)


def plot_plasticity(series: dict[str, dict[str, dict]], variants: Sequence[str], path: str,
                    title: Optional[str] = None) -> str:
  """A panel per plasticity metric: each run's probes as a thin line (one per seed), and each variant's mean over its
  runs, drawn only at the env steps every one of them has measured (a mean of different seeds at different steps
  would read as a trend).

  series: metric -> variant -> {"env_steps": [P], "mean": [P] (NaN where not every run measured), "runs": n,
  "per_run": [{"seed": s, "env_steps": [...], "values": [...]}]}.
  """
  plt = _pyplot()
  styles = _line_styles(variants)
  fig, axes = _grid(plt, len(series), panel_w=4.2, panel_h=3.0)
  for ax, (metric, by_variant) in zip(axes, series.items()):
    for name, line in by_variant.items():
      for run in line.get("per_run", []):
        ax.plot(run["env_steps"], run["values"], color=styles[name]["color"], linestyle=styles[name]["linestyle"],
                linewidth=0.8, alpha=0.35)
      ax.plot(np.asarray(line["env_steps"], float), np.asarray(line["mean"], float), **styles[name],
              markersize=3, linewidth=1.8, label=f"{_label(name)} ({_runs(line['runs'])})")
    ax.set_title(metric, fontsize=9)
    ax.set_xlabel("env steps")
  Line2D, _ = _artists()

  _legend_outside(fig, axes, [Line2D([], [], color="grey", linewidth=1.8, label="thick: mean over runs"),
                              Line2D([], [], color="grey", linewidth=0.8, alpha=0.35, label="thin: one run")])
  if title:
    fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def plot_continual(curves: dict[str, dict[str, dict]], variants: Sequence[str], schedule: dict, path: str) -> str:
  """A panel per task, on one axis of job env steps: each variant's evaluation score of the task at every
  evaluation, the switches as dashed lines, the phases in which the task is played shaded.

  curves: task -> variant -> {"env_steps": [P], "mean": [P], "runs": n}; schedule: {"sequence": [game per phase],
  "switches": [env steps], "switch_every_env_steps": N}.
  """
  plt = _pyplot()
  Line2D, Patch = _artists()

  styles = _line_styles(variants)
  fig, axes = plt.subplots(len(curves), 1, figsize=(9, 2.8 * len(curves) + 0.6), sharex=True, squeeze=False)
  axes = list(axes[:, 0])
  every = schedule["switch_every_env_steps"]
  for ax, (task, by_variant) in zip(axes, curves.items()):
    for phase, game in enumerate(schedule["sequence"]):
      if game == task:
        ax.axvspan(phase * every, (phase + 1) * every, color="0.9", linewidth=0)
    for switch in schedule["switches"]:
      ax.axvline(switch, color="grey", linestyle="--", linewidth=0.8)
    for name in variants:
      if name in by_variant:
        curve = by_variant[name]
        ax.plot(curve["env_steps"], curve["mean"], **styles[name], markersize=4, linewidth=1.2,
                label=f"{_label(name)} ({_runs(curve['runs'])})")
    ax.set_title(task, fontsize=9)
    ax.set_ylabel("evaluation return")
  axes[-1].set_xlabel("job env steps (agent steps)")
  axes[-1].set_xlim(left=0)  # the right end is the data's: the final evaluations lie a little past the last phase
  marks = [Patch(color="0.9", label="shaded: the task is played"),
           Line2D([], [], color="grey", linestyle="--", linewidth=0.8, label="dashed: a task switch")]
  _legend_outside(fig, axes, marks, title="mean over runs at each evaluation")
  fig.suptitle(" → ".join(schedule["sequence"]), fontsize=9)
  return _save(fig, path)
