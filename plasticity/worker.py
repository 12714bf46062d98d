"""Probing a run's checkpoints: the worker train.py starts, and the engine of the offline CLI.

  python -m plasticity.worker RUN_DIR              # started by train.py --probe-every-updates N
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

import os
import sys
import time
from typing import Callable, Iterable, Optional

PLASTICITY_STREAM = "plasticity"
FOLLOW_POLL_S = 2.0


def prepare_process(device: str, *, background: bool) -> None:
  """Before JAX is imported: pick the device and, for the worker beside a learner, yield the CPU to it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported (by a config module) but no backend started yet: still in time
      sys.modules["jax"].config.update("jax_platforms", "cpu")
  # A GPU learner preallocates most of the memory; the probes take what they need from the rest.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if background:  # beside a learner: at most one core for the probes on a CPU, and only what the learner leaves
    from training.actor import single_threaded_xla_cpu

    single_threaded_xla_cpu()
    os.nice(10)


class RunProber:
  """Loads a run's checkpoints and probes them; one instance per run directory."""

  def __init__(self, run_dir: str, probe_config=None):
    from common.checkpoints import CheckpointStore, NoCheckpointError
    from training.config import load_config, make_learner

    self.run_dir = run_dir
    self.config = load_config(run_dir)
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(checkpoints):
      raise NoCheckpointError(f"run directory {run_dir} has no checkpoint to probe")
    self.probe_config = probe_config or self.config.probe
    self.learner, self.template = make_learner(self.config)
    self.store = CheckpointStore(checkpoints, read_only=True)
    self._previous: tuple[int, object] | None = None  # (step, params) of the last probed checkpoint

  def eligible_steps(self) -> list[int]:
    """Checkpoints to probe, oldest first: multiples of probe_every_updates and the final one (or all)."""
    every = self.config.probe_every_updates
    steps = self.store.steps()
    if not every:
      return steps
    return [step for step in steps if step % every == 0 or (step == steps[-1] and self.is_final(step))]

  def is_final(self, step: int) -> bool:
    return bool(self.store.read_metadata(step).get("finished"))

  def previous_params(self, step: int):
    """Params of the eligible checkpoint before `step` (kept from the last probe, else loaded); None if none."""
    earlier = [s for s in self.eligible_steps() if s < step]
    if not earlier:
      return None
    if self._previous is not None and self._previous[0] == earlier[-1]:
      return self._previous[1]
    state, _, _ = self.store.restore(self.template, step=earlier[-1])
    return state.params

  def probe(self, step: int) -> dict:
    """Probes checkpoint `step`; returns its plasticity.jsonl row."""
    from plasticity.probes import probe_checkpoint

    state, meta, _ = self.store.restore(self.template, step=step)
    inputs = self.store.read_probe_inputs(step)
    previous = self.previous_params(step)
    started = time.monotonic()
    heatmap_path = (os.path.join(self.run_dir, PLASTICITY_STREAM, f"grad_cov_{step}.png")
                    if self.probe_config.heatmaps else None)  # save_heatmap_png makes the folder
    row = probe_checkpoint(self.learner, state, inputs, previous, self.probe_config, step=step, heatmap_path=heatmap_path)
    self._previous = (step, state.params)
    return {"step": step, "env_steps": meta["env_steps"], **row, "probe_wall_s": time.monotonic() - started}

  def close(self) -> None:
    self.store.close()


def probed_steps(path: str) -> set[int]:
  from common.metrics import read_rows

  return {row["step"] for row in read_rows(path) if "step" in row}


def describe(row: dict) -> str:
  """One line for a probed checkpoint, printed by the worker and the offline CLI."""
  return (f"step {row['step']:,} ({row['env_steps']:,} env steps): target-fit loss {row['target_fit_final_loss']:.4g} "
          f"/ baseline {row['target_fit_baseline']:.4g}, top Hessian eigenvalue {row['hessian_max_eigenvalue']:.4g}, "
          f"srank {row['srank']}, dormant {row['dormant_frac_tau_0']:.3f} ({row['probe_wall_s']:.1f} s)")


def probe_pending(prober: RunProber, write: Callable[[dict], None], done: set[int],
                  only: Optional[Iterable[int]] = None, on_skip: Callable[[int, str], None] = lambda step, why: None) -> int:
  """Probes every eligible checkpoint not in `done` (or only `only`); returns how many it probed."""
  from common.checkpoints import NoCheckpointError

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
  from common.metrics import MetricsLog

  prober = RunProber(run_dir)
  log = MetricsLog(run_dir)
  done = probed_steps(log.path(PLASTICITY_STREAM))

  def write(row: dict) -> None:
    log.write(PLASTICITY_STREAM, row)
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
  import argparse

  parser = argparse.ArgumentParser(
      description="The probe worker of a training run (started by train.py): probes new checkpoints until the run's final one.")
  parser.add_argument("run_dir")
  parser.add_argument("--incarnation", type=int, default=0, help="restart count (set by the supervisor)")
  parser.add_argument("--parent-pid", type=int, default=0, help="die with this process (set by the supervisor)")
  args = parser.parse_args(argv)
  if args.parent_pid:
    from training.actor import die_with_parent

    die_with_parent(args.parent_pid)
  from training.config import load_config

  prepare_process(load_config(args.run_dir).probe.device, background=True)
  return follow(args.run_dir)


if __name__ == "__main__":
  sys.exit(main())
