"""Probing a run's checkpoints: the worker train.py starts, and the engine of the offline CLI.

  python -m training.probe_worker RUN_DIR              # started by train.py --probe-every-updates N
  python -m plasticity RUN_DIR [--steps 1000 2000] [--out FILE] [--probe.probe-steps 500 ...]   # offline

The worker reads checkpoints from disk, never the learner's live state, so it
cannot perturb training. It runs at a lower CPU priority than the learner and
actors, on the GPU only when one is there (memory grown on demand, so it fits
beside the learner's preallocation), and writes one row per probed checkpoint to
`metrics/plasticity.jsonl` plus TensorBoard scalars (`plasticity/...`) and a
gradient-covariance heatmap under `plasticity/`.

Which checkpoints: with `probe_every_updates = N` in the run's config, those whose
step is a multiple of N and the run's final one; a run trained without probes has
all of its checkpoints probed offline. Each checkpoint carries the inputs the
probes use (a sample of replay transitions saved with it), and the probes'
randomness is seeded by (probe seed, step), so probing the same checkpoint
during training and offline gives the same numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Iterable, Optional

from common.metrics import MetricsLog, read_rows
from common.process_setup import describe_gpu_memory, setup_process
from common.processes import EXIT_USAGE, die_with_parent
from common.run_dir import PROBE_LOCK, PROBE_STREAM, RunDir, RunLockedError
from training.config import around_remedy, load_config

# This module imports without JAX: the worker's main() and the offline CLI (plasticity/__main__.py) call
# setup_process("probe") first, for the device their flags or the run's config name; the functions that need
# JAX or Orbax import them after it.

FOLLOW_POLL_S = 2.0
CPU_S_PER_FIT_FRAME_STEP = 2.0e-3
"""Rough cost of a whole Nature-CNN probe on one CPU core, per frame-step of its target fitting
(num_targets x probe_steps x batch, x2 with the fresh reference): 50 s for the CPU sizes' 25,600, measured
on this project's 2-core AMD EPYC with one XLA thread. Only used until the run's first probe is done."""


class RunProber:
  """Loads a run's checkpoints and probes them; one instance per run directory."""

  def __init__(self, run_dir: str, probe_config=None, figures_dir: str | None = None):
    """`figures_dir`: where the heatmaps go (default: the run's plasticity/)."""
    # JAX, Orbax: after setup_process (the module's note)
    from common.checkpoints import NoCheckpointError
    from training.saved_run import open_run

    self.run_dir = run_dir
    self.run = RunDir(run_dir)
    self.figures_dir = figures_dir
    if not os.path.isdir(self.run.checkpoints_dir):
      raise NoCheckpointError(f"run directory {run_dir} has no checkpoint to probe")
    self.saved = open_run(run_dir)
    self.config, self.learner, self.store = self.saved.config, self.saved.learner, self.saved.store
    import jax  # after setup_process (the module's note)

    # Sizes left at None are filled in here, for the device these probes run on, and recorded in every row.
    self.backend = jax.default_backend()
    self.probe_config = (probe_config or self.config.probe).resolved(self.backend)
    self._previous: tuple[int, object] | None = None  # (step, params) of the last probed checkpoint

  def eligible_steps(self) -> list[int]:
    """Checkpoints to probe, oldest first: multiples of probe_every_updates, those around remedy events and the
    final one (or all)."""
    return eligible_steps(self.store, self.config.probe_every_updates, self.config)

  def is_final(self, step: int) -> bool:
    return bool(self.store.read_metadata(step).get("finished"))

  def previous_params(self, step: int):
    """Params of the eligible checkpoint before `step` (kept from the last probe, else loaded); None if none."""
    earlier = [s for s in self.eligible_steps() if s < step]
    if not earlier:
      return None
    if self._previous is not None and self._previous[0] == earlier[-1]:
      return self._previous[1]
    state, _, _ = self.saved.restore(earlier[-1])
    return state.params

  def probe(self, step: int) -> dict:
    """Probes checkpoint `step`; returns its plasticity.jsonl row."""
    from plasticity.probes import probe_checkpoint  # JAX: after setup_process (the module's note)

    state, meta, _ = self.saved.restore(step)
    inputs = self.store.read_probe_inputs(step)
    previous = self.previous_params(step)
    started = time.monotonic()
    heatmap_path = self._heatmap_path(step) if self.probe_config.heatmaps else None  # save_heatmap_png makes the folder
    row = probe_checkpoint(self.learner, state, inputs, previous, self.probe_config, step=step, heatmap_path=heatmap_path)
    self._previous = (step, state.params)
    return {"step": step, "env_steps": meta["env_steps"], **row, "probe_wall_s": time.monotonic() - started,
            "probe_backend": self.backend, "probe_sizes": self.probe_config.sizes()}

  def _heatmap_path(self, step: int) -> str:
    if self.figures_dir is None:
      return self.run.heatmap_path(step)
    return os.path.join(self.figures_dir, os.path.basename(self.run.heatmap_path(step)))

  def describe_settings(self) -> str:
    sizes = ", ".join(f"{name} {value:,}" for name, value in self.probe_config.sizes().items())
    return f"probing on {self.backend} with {sizes}"

  def close(self) -> None:
    self.saved.close()


def eligible_steps(store, probe_every_updates: int, run_config=None) -> list[int]:
  """Steps of `store` (a CheckpointStore) to probe, oldest first: the multiples of probe_every_updates, the
  ones just before and after a remedy event (the run's probe_around_remedies), the ones at task switches (its
  probe_at_task_switches: their metadata says so) and the run's final checkpoint; every checkpoint when
  probe_every_updates is 0."""
  steps = store.steps()
  if not probe_every_updates:
    return steps
  final = steps[-1] if steps and store.read_metadata(steps[-1]).get("finished") else None
  switches = set()
  if run_config is not None and run_config.probe_at_task_switches:
    switches = {step for step in steps if _metadata_or_empty(store, step).get("task_switch") is not None}
  return [step for step in steps if step % probe_every_updates == 0 or step == final or step in switches
          or (run_config is not None and around_remedy(run_config, step))]


def _metadata_or_empty(store, step: int) -> dict:
  try:
    return store.read_metadata(step)
  except Exception:  # a damaged checkpoint is skipped by the probe itself
    return {}


@dataclasses.dataclass(frozen=True)
class ProbeBacklog:
  """What the probe worker still has to do for a run, and a rough guess of how long it will take."""

  left: int
  """Eligible checkpoints without a plasticity.jsonl row yet."""
  remaining_s: Optional[float]
  """Seconds until they are probed, by `per_probe_s`; None when there is no basis for a guess."""
  per_probe_s: Optional[float]
  done: int
  """Rows whose probe_wall_s the estimate averages (0: the estimate is CPU_S_PER_FIT_FRAME_STEP's rough guess)."""


def rough_probe_s(config, backend: str) -> Optional[float]:
  """A guess at one probe's seconds before any is measured: Nature CNN on a CPU only (else None)."""
  probe = config.probe.resolved(backend)
  if backend != "cpu" or config.agent.torso != "nature":
    return None
  frame_steps = probe.num_targets * probe.probe_steps * min(probe.target_batch_size, probe.inputs)
  return frame_steps * (2 if probe.fresh_reference else 1) * CPU_S_PER_FIT_FRAME_STEP


def probe_backlog(run_dir: str, store, config, backend: str, *, waiting_since: float) -> ProbeBacklog:
  """The checkpoints of `store` (the run's CheckpointStore) left to probe, and about how long they will take:
  the mean probe_wall_s of the rows written so far (else `rough_probe_s`) per checkpoint, less the time the
  current probe has run (since the later of the last row and `waiting_since`, a time.time())."""
  path = RunDir(run_dir).stream_path(PROBE_STREAM)
  rows = read_rows(path, keep=("step", "probe_wall_s"))
  done = {row["step"] for row in rows if "step" in row}
  left = sum(step not in done for step in eligible_steps(store, config.probe_every_updates, config))
  walls = [row["probe_wall_s"] for row in rows if "probe_wall_s" in row]
  per_probe_s = sum(walls) / len(walls) if walls else rough_probe_s(config, backend)
  remaining_s = None
  if per_probe_s is not None:
    last_row_at = os.path.getmtime(path) if rows else 0.0
    running_s = min(max(0.0, time.time() - max(last_row_at, waiting_since)), per_probe_s) if left else 0.0
    remaining_s = max(0.0, left * per_probe_s - running_s)
  return ProbeBacklog(left, remaining_s, per_probe_s, len(walls))


def probed_steps(path: str) -> set[int]:
  return {row["step"] for row in read_rows(path) if "step" in row}


def describe(row: dict) -> str:
  """One line for a probed checkpoint, printed by the worker and the offline CLI."""
  return (f"step {row['step']:,} ({row['env_steps']:,} env steps): target-fit loss {row['target_fit_final_loss']:.4g} "
          f"/ baseline {row['target_fit_baseline']:.4g}, top Hessian eigenvalue {row['hessian_max_eigenvalue']:.4g}, "
          f"srank {row['srank']}, dormant {row['dormant_frac_tau_0']:.3f} ({row['probe_wall_s']:.1f} s)")


def probe_pending(prober: RunProber, write: Callable[[dict], None], done: set[int],
                  only: Optional[Iterable[int]] = None, on_skip: Callable[[int, str], None] = lambda step, why: None) -> int:
  """Probes every eligible checkpoint not in `done` (or only `only`); returns how many it probed."""
  from common.checkpoints import NoCheckpointError  # JAX, Orbax: after setup_process (the module's note)

  wanted = set(only) if only is not None else None
  probed = 0
  for step in prober.eligible_steps():
    if step in done or (wanted is not None and step not in wanted):
      continue
    try:
      row = prober.probe(step)
    except NoCheckpointError as error:  # saved without probe inputs, or deleted by retention meanwhile
      on_skip(step, str(error))
      done.add(step)
      continue
    write(row)
    done.add(step)
    probed += 1
  return probed


def follow(run_dir: str) -> int:
  """The worker's loop: probe each new eligible checkpoint until the run's final one is probed."""
  with RunDir(run_dir).lock("probe worker", PROBE_LOCK):  # one prober writes plasticity.jsonl
    return _follow(run_dir)


def _follow(run_dir: str) -> int:
  prober = RunProber(run_dir)
  log = MetricsLog(run_dir)
  done = probed_steps(log.path(PROBE_STREAM))
  print(f"probe worker: {prober.describe_settings()}; {describe_gpu_memory()}", flush=True)

  def write(row: dict) -> None:
    log.write(PROBE_STREAM, row)
    print(f"probe worker: {describe(row)}", flush=True)

  def skip(step: int, why: str) -> None:
    print(f"probe worker: skipping step {step:,}: {why}", flush=True)

  try:
    while True:
      try:
        probe_pending(prober, write, done, on_skip=skip)
      except FileNotFoundError:
        pass  # a checkpoint being replaced (the final one of a step saved before): try again at the next poll
      steps = prober.store.steps()
      if steps and prober.is_final(steps[-1]) and steps[-1] in done:
        return 0
      time.sleep(FOLLOW_POLL_S)
  finally:
    log.close()
    prober.close()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="The probe worker of a training run (started by train.py): probes new checkpoints until the run's final one.")
  parser.add_argument("run_dir")
  parser.add_argument("--incarnation", type=int, default=0, help="restart count (set by the supervisor)")
  parser.add_argument("--parent-pid", type=int, default=0, help="die with this process (set by the supervisor)")
  args = parser.parse_args(argv)
  if args.parent_pid:
    die_with_parent(args.parent_pid)
  setup_process("probe", device=load_config(args.run_dir).probe.device, background=True)  # before JAX loads
  try:
    return follow(args.run_dir)
  except RunLockedError as error:  # another prober writes this run's plasticity.jsonl
    print(f"probe worker: error: {error}", file=sys.stderr, flush=True)
    return EXIT_USAGE


if __name__ == "__main__":
  from common.processes import exit_now

  exit_now(main())
