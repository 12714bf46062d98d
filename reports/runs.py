"""Run directories on disk: finding them, their progress, their scores, and grouping them into named variants.

A run directory is one `train.py` run: `config.json`, `checkpoints/<update>/`,
`metrics/*.jsonl`. Runs are grouped into variants by the config fields that define
the agent (everything but the game, the seed and how the run ran: RESUMABLE_FIELDS),
and each variant is named by the fields where it departs from the other runs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from common.metrics import read_rows
from common.validation import ConfigError, is_finite_number
from common.run_dir import CONFIG_FILE, LIVES_STREAM, PROBE_STREAM, RunDir, sweep_variant
from training.config import PRESETS, RESUMABLE_FIELDS, RunConfig, load_config

BASE_VARIANT = "dqn"
SHORT_COMMIT = 7  # hex digits of a commit in a report
LONE_NAME_PARTS = 3  # departures from its preset named in a lone variant's name
# Not part of what an agent is: where, with which seed and how a run ran. The preset only supplies
# defaults: its effect is in the fields themselves.
IGNORED_FIELDS = frozenset(("game", "seed", "preset", "checkpoint_replay", *RESUMABLE_FIELDS))
# Short names in variant names (dotted config field -> name).
ALIASES = {
    "agent.weight_decay": "wd",
    "agent.n_step": "n",
    "agent.learning_rate": "lr",
    "agent.mlp_hidden_sizes": "mlp",
    "agent.target_update_period_updates": "target_period",
    "agent.max_grad_norm": "clip_norm",
    "replay.samples_per_insert": "spi",
    "env.sticky_action_prob": "sticky",
}
# Fields whose value names itself: head=two_hot -> `two_hot`, torso=impala -> `impala`.
VALUE_NAMED = frozenset(("agent.head", "agent.torso", "agent.optimizer", "agent.loss", "agent.value_transform",
                         "agent.weight_decay_form"))


# ----------------------------------------------------------------------------------------------------------------
# Finding runs and their progress


def find_run_dirs(paths: Sequence[str]) -> list[str]:
  """Run directories among `paths`: each path is one (it has config.json) or is searched recursively for them.

  Raises ConfigError for a path that does not exist or when no run directory is found.
  """
  found: list[str] = []
  for path in paths:
    if not os.path.exists(path):
      raise ConfigError(f"{path} does not exist")
    if not os.path.isdir(path):
      raise ConfigError(f"{path} is not a directory")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
      found.append(os.path.normpath(path))
      continue
    for directory, subdirs, files in os.walk(path):
      if CONFIG_FILE in files and directory != path:
        found.append(os.path.normpath(directory))
        subdirs.clear()  # a run directory holds no other run
      else:
        subdirs.sort()
  unique = sorted(set(found))
  if not unique:
    raise ConfigError(f"no run directories (with {CONFIG_FILE}) found in {', '.join(paths)}")
  return unique


@dataclasses.dataclass(frozen=True)
class Progress:
  """Where a run stands, from its newest readable checkpoint."""

  checkpoint_steps: tuple[int, ...]
  """Learner updates of its complete checkpoints, oldest first (empty: none yet)."""
  finished: bool
  """The newest readable checkpoint says the run reached its budget."""
  env_steps: Optional[int]
  """Env steps of that checkpoint (None without one)."""


def checkpoint_progress(run_dir: str) -> Progress:
  """The run's checkpoints and the `finished` flag of the newest one whose metadata reads (a damaged one is passed over)."""
  checkpoints = RunDir(run_dir).checkpoints_dir
  if not os.path.isdir(checkpoints):
    return Progress((), False, None)
  from common.checkpoints import CheckpointStore  # Orbax, JAX: only to read a run's checkpoints

  with CheckpointStore(checkpoints, read_only=True) as store:
    steps = tuple(store.steps())
    for step in reversed(steps):
      try:
        meta = store.read_metadata(step)
      except Exception:  # a damaged checkpoint: train.py --resume would skip it too
        continue
      return Progress(steps, bool(meta.get("finished")), meta.get("env_steps"))
    return Progress(steps, False, None)


def rows_left_out(run_dir: str) -> dict[str, int]:
  """What the scores leave out of a run's metrics, by what it is: rows whose return is not a finite number (the
  learner never writes one: a file edited or damaged by hand). Raises ValueError for a stream that does not
  parse (read_rows names the file and line)."""
  run = RunDir(run_dir)
  left_out = {
      "episodes with a non-finite return": sum(
          "return" in row and not is_finite_number(row["return"]) for row in read_rows(run.stream_path("episodes"), keep=("return",))),
      "evaluations with a non-finite mean return": sum(
          "mean_return" in row and not is_finite_number(row["mean_return"])
          for row in read_rows(run.stream_path("eval"), keep=("mean_return",))),
  }
  read_rows(run.stream_path(PROBE_STREAM))  # parses, or the run is skipped
  return {what: count for what, count in left_out.items() if count}


def run_code(run_dir: str) -> list[str]:
  """The code each life of the run ran (metrics/lives.jsonl, common.provenance): its short commit, `+dirty` when
  tracked files differed from it, `unknown` outside a git checkout; a life like the one before is not repeated.
  Empty for a run from before lives were recorded."""
  labels: list[str] = []
  for row in read_rows(RunDir(run_dir).stream_path(LIVES_STREAM)):
    commit = row.get("commit")
    label = "unknown" if not commit else str(commit)[:SHORT_COMMIT] + ("+dirty" if row.get("dirty") else "")
    if not labels or labels[-1] != label:
      labels.append(label)
  return labels


def run_tasks(run) -> tuple[str, ...]:
  """The games a run played: its task schedule's, or its one game."""
  schedule = run.config.task_schedule
  return schedule.distinct_games if schedule else (run.game,)


def task_evaluations(run_dir: str) -> list[dict]:
  """The rows of metrics/eval.jsonl that score one task of a continual run (mean_return, task, env_steps), in order."""
  return [row for row in read_rows(RunDir(run_dir).stream_path("eval"))
          if "mean_return" in row and "task" in row and "env_steps" in row]


def task_phase_scores(run, evaluations: Sequence[dict]) -> dict[int, dict[str, float]]:
  """A continual run's evaluations (`task_evaluations`): phase (switches so far) -> task -> mean return of the
  phase's first evaluation of that task, i.e. each task's score after each switch; {} for a run on one game."""
  schedule = run.config.task_schedule
  if schedule is None:
    return {}
  last_phase = schedule.phase_at(max(run.config.total_env_steps - 1, 0))  # an evaluation at the end is in it
  phases: dict[int, dict[str, float]] = {}
  for row in evaluations:
    phase = min(schedule.phase_at(row["env_steps"]), last_phase)
    phases.setdefault(phase, {}).setdefault(row["task"], float(row["mean_return"]))
  return phases


def binned_curve(env_steps: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Mean of `values` in each bin [edges[i], edges[i+1]) (the last bin closed): float[len(edges) - 1].

  A bin without a value carries the previous bin's mean forward while the run has
  later data; bins before the run's first value and after its last are NaN.
  """
  num_bins = len(edges) - 1
  curve = np.full(num_bins, np.nan)
  if len(values) == 0:
    return curve
  index = np.clip(np.searchsorted(edges, env_steps, side="right") - 1, 0, num_bins - 1)
  sums = np.bincount(index, weights=values, minlength=num_bins)
  counts = np.bincount(index, minlength=num_bins)
  first, last = index.min(), index.max()
  for b in range(first, last + 1):
    curve[b] = sums[b] / counts[b] if counts[b] else curve[b - 1]
  return curve


def interpolated_curve(env_steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
  """Linear interpolation of (env_steps, values) at `grid`; NaN outside the run's measured range."""
  env_steps, values = np.asarray(env_steps, float), np.asarray(values, float)
  keep = np.isfinite(values)
  env_steps, values = env_steps[keep], values[keep]
  if len(values) == 0:
    return np.full(len(grid), np.nan)
  order = np.argsort(env_steps, kind="stable")
  env_steps, values = env_steps[order], values[order]
  curve = np.interp(grid, env_steps, values)
  curve[(grid < env_steps[0]) | (grid > env_steps[-1])] = np.nan
  return curve


# ----------------------------------------------------------------------------------------------------------------
# Variants


def agent_fields(config: RunConfig) -> dict[str, Any]:
  """The fields that define the agent, flattened to dotted names (`agent.layer_norm`), lists as tuples."""
  flat = {}
  for key, value in config.to_dict().items():
    if key in IGNORED_FIELDS:
      continue
    if isinstance(value, dict):
      for sub, sub_value in value.items():
        if f"{key}.{sub}" not in IGNORED_FIELDS:
          flat[f"{key}.{sub}"] = _hashable(sub_value)
    else:
      flat[key] = _hashable(value)
  return flat


def _hashable(value: Any) -> Any:
  return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def format_value(value: Any) -> str:
  """Short and exact: 1e-4 rather than 0.0001, 0.5 rather than 5e-1, 64x64 for a tuple."""
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return str(value)
  if isinstance(value, tuple):
    return "x".join(format_value(v) for v in value)
  if isinstance(value, float):
    plain = f"{value:.6g}"
    mantissa, _, exponent = f"{value:.5e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    scientific = f"{mantissa}e{int(exponent)}"
    return scientific if len(scientific) < len(plain) else plain
  return str(value)


def format_number(value: Optional[float]) -> str:
  """A score or statistic in a table: 4 significant digits, thousands separated from 1e5; `-` for none or not finite."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-"
  return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"


def departures_text(departures: dict[str, Any], strip: str = "") -> str:
  """`agent.layer_norm=True, agent.weight_decay=1e-4` (each field with `strip` taken off its name), or "" for none."""
  return ", ".join(f"{key.removeprefix(strip)}={format_value(tuple(value) if isinstance(value, list) else value)}"
                   for key, value in departures.items())


def variant_names(field_sets: Sequence[dict[str, Any]], defaults: Optional[dict[str, Any]] = None) -> list[str]:
  """A readable, distinct name for each distinct set of agent fields, e.g. `layer_norm+two_hot+wd=1e-4`.

  A field that differs across the sets has a reference value: the one most sets
  share, ties going to `defaults` (group_variants passes the config dataclasses' defaults). Each set is named by its
  departures from the references, in config order: a boolean by its name
  (`layer_norm`, or `no_clip_rewards` when it turns one off), a value-named field by
  its value (`two_hot`), others as `name=value` with short aliases (`wd`, `n`, `lr`).
  The set with no departure is `dqn`.
  """
  references = reference_values(field_sets, defaults)
  differing = list(references)
  leaf_counts = collections.Counter(key.rsplit(".", 1)[-1] for key in differing)
  names = []
  for fields in field_sets:
    parts = []
    for key in differing:
      value = fields.get(key)
      if _canonical(value) == references[key]:
        continue
      leaf = key.rsplit(".", 1)[-1]
      label = ALIASES.get(key, leaf if leaf_counts[leaf] == 1 else key)
      if isinstance(value, bool):
        parts.append(label if value else f"no_{label}")
      elif key in VALUE_NAMED and isinstance(value, str):
        parts.append(value)
      else:
        parts.append(f"{label}={format_value(value)}")
    names.append("+".join(parts) or BASE_VARIANT)
  seen: collections.Counter = collections.Counter()
  for i, name in enumerate(names):  # distinct sets always differ in a named field; this is a guard only
    seen[name] += 1
    if seen[name] > 1:
      names[i] = f"{name}#{seen[name]}"
  return names


def reference_values(field_sets: Sequence[dict[str, Any]], defaults: Optional[dict[str, Any]] = None) -> dict[str, str]:
  """Each field that differs across the sets -> its reference value (canonical JSON): the value most sets share, ties
  going to `defaults`. The fields not listed are the same in every set."""
  defaults = defaults or {}
  keys = list(dict.fromkeys(key for fields in field_sets for key in fields))
  references = {}
  for key in keys:
    counts = collections.Counter(_canonical(fields.get(key)) for fields in field_sets)
    if len(counts) < 2:
      continue
    top = max(counts.values())
    tied = [value for value, count in counts.items() if count == top]
    default = _canonical(defaults.get(key))
    references[key] = default if default in tied else tied[0]
  return references


def departures(fields: dict[str, Any], references: dict[str, str]) -> dict[str, Any]:
  """The fields whose value is not the reference one (`reference_values`): what makes a variant what it is."""
  return {key: fields.get(key) for key in references if _canonical(fields.get(key)) != references[key]}


def _canonical(value: Any) -> str:
  return json.dumps(value, sort_keys=True)


# ----------------------------------------------------------------------------------------------------------------
# Runs and variants together


@dataclasses.dataclass(frozen=True)
class Run:
  run_dir: str
  config: RunConfig
  progress: Progress
  left_out: dict[str, int] = dataclasses.field(default_factory=dict)
  """Rows of its metrics the scores leave out, by what they are (rows_left_out)."""

  @property
  def game(self) -> str:
    return self.config.game

  @property
  def seed(self) -> int:
    return self.config.seed

  @property
  def in_progress(self) -> bool:
    return not self.progress.finished


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  fields: dict[str, Any]
  """The differing fields' values for this variant (dotted names), in config order."""
  runs: tuple[Run, ...]
  departures: dict[str, Any] = dataclasses.field(default_factory=dict)
  """Those of `fields` whose value is not the reference one (the value most variants share): what its name says."""


@dataclasses.dataclass(frozen=True)
class SkippedRun:
  run_dir: str
  reason: str


def load_runs(paths: Sequence[str]) -> tuple[list[Run], list[SkippedRun]]:
  """Every run directory found under `paths`, with its config and checkpoint progress, and those that cannot be
  read (a damaged config.json, a metrics file with a torn line in its middle) with the reason; ConfigError if
  there are none, or none can be read."""
  runs, skipped = [], []
  for run_dir in find_run_dirs(paths):
    try:
      config = load_config(run_dir)
      left_out = rows_left_out(run_dir)
    except (ConfigError, ValueError) as error:
      skipped.append(SkippedRun(run_dir, str(error)))
      continue
    runs.append(Run(run_dir, config, checkpoint_progress(run_dir), left_out))
  if not runs:
    raise ConfigError("no run could be read: " + "; ".join(f"{s.run_dir}: {s.reason}" for s in skipped))
  return runs, skipped


def lone_variant_name(runs: Sequence[Run], fields: dict[str, Any]) -> str:
  """The name of the only variant of a report: its runs' preset, plus its departures from that preset's agent
  (`lyle2023`, `dqn_zoo+wd=1e-4`); runs of several presets are named by their departures from the defaults."""
  presets = {run.config.preset for run in runs}
  if len(presets) != 1:
    defaults = agent_fields(RunConfig())
    return variant_names([fields, defaults], defaults)[0]
  preset = presets.pop()
  departures = variant_names([fields, agent_fields(PRESETS[preset])], agent_fields(PRESETS[preset]))[0]
  if departures == BASE_VARIANT:
    return preset
  parts = departures.split("+")
  if len(parts) > LONE_NAME_PARTS:  # a legend label, not a config dump: the run's config.json has every field
    parts = parts[:LONE_NAME_PARTS] + [f"{len(parts) - LONE_NAME_PARTS}_more"]
  return "+".join([preset, *parts])


def sweep_name(runs: Sequence[Run]) -> Optional[str]:
  """The sweep variant all of `runs` were laid out under by sweep.py (common.run_dir.sweep_variant), else None."""
  names = {sweep_variant(run.run_dir, run.game, run.seed) for run in runs}
  return names.pop() if len(names) == 1 else None


def group_variants(runs: Sequence[Run]) -> list[Variant]:
  """Runs grouped by their agent fields; named by their sweep variants when a sweep laid them out (each group under
  one variant directory, a distinct one each), else with `variant_names`. The base variant (no departures) first,
  then by departures and name."""
  groups: dict[str, list[Run]] = {}
  field_sets: dict[str, dict] = {}
  for run in runs:
    fields = agent_fields(run.config)
    key = _canonical(fields)
    groups.setdefault(key, []).append(run)
    field_sets[key] = fields
  keys = list(groups)
  # Ties go to the dataclass defaults (plain Double DQN: no layer norm, no weight decay, scalar head), not to a
  # preset's values, so that `layer_norm` names the runs with layer norm whichever preset the runs started from.
  defaults = agent_fields(RunConfig())
  names = variant_names([field_sets[key] for key in keys], defaults)
  swept = [sweep_name(groups[key]) for key in keys]
  if len(keys) == 1:
    names = [lone_variant_name(groups[keys[0]], field_sets[keys[0]])]
  elif all(swept) and len(set(swept)) == len(keys):
    names = swept
  references = reference_values([field_sets[key] for key in keys], defaults)
  variants = [
      Variant(name, {k: field_sets[key].get(k) for k in references},
              tuple(sorted(groups[key], key=lambda run: (run.game, run.seed, run.run_dir))),
              departures(field_sets[key], references))
      for name, key in zip(names, keys)
  ]
  return sorted(variants, key=lambda v: (len(v.departures), v.name))
