"""Probe the saved checkpoints of a run, offline.

  python -m plasticity RUN_DIR                              # every probe checkpoint not yet in metrics/plasticity.jsonl
  python -m plasticity RUN_DIR --steps 250000 500000        # only these checkpoints
  python -m plasticity RUN_DIR --out other.jsonl --probe.probe-steps 500   # probe again, other settings, other file

The probes' inputs are the replay transitions saved with each checkpoint and
their randomness is seeded by (probe seed, step), so with the run's own probe
settings the rows equal those the probe worker wrote during training. Rows go to
RUN_DIR/metrics/plasticity.jsonl (and TensorBoard), and the heatmaps to RUN_DIR/plasticity/, unless --out
names another JSON Lines file: then the rows go there and the heatmaps beside it (other_figures/ for
other.jsonl), and nothing is written into RUN_DIR, so a read-only run can be probed. Steps already in the output
file are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Optional

import tyro
from tyro.conf import Positional

from common.metrics import MetricsLog
from common.process_setup import setup_process
from common.run_dir import PROBE_LOCK, PROBE_STREAM, RunDir
from common.validation import ConfigError
from plasticity.config import ProbeConfig
from training.config import load_config
from training.probe_worker import RunProber, describe, probe_pending, probed_steps

# This module imports without JAX: setup_process("probe") comes first, for the device --probe.device names.

EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class Args:
  """Probe the saved checkpoints of a training run."""

  run_dir: Positional[str]
  """A run directory written by train.py."""
  steps: tuple[int, ...] = ()
  """Only these checkpoint steps (default: every probe checkpoint of the run)."""
  out: Optional[str] = None
  """JSON Lines file for the rows, with the heatmaps in OUT's stem + _figures/ (default: RUN_DIR/metrics/plasticity.jsonl,
  with TensorBoard scalars, and RUN_DIR/plasticity/)."""
  probe: ProbeConfig = ProbeConfig()
  """Probe settings; the default is the run's own (config.json)."""


def parse_args(argv: list[str]) -> Args:
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("run_dir", nargs="?")
  known, _ = pre.parse_known_args(argv)
  if known.run_dir is None or known.run_dir.startswith("-"):
    return tyro.cli(Args, args=argv, description=__doc__)  # --help, or tyro's own message for a missing RUN_DIR
  RunDir.for_reading(known.run_dir)  # a run directory, read-only ones included; ConfigError if not
  config = load_config(known.run_dir)
  return tyro.cli(Args, args=argv, default=Args(run_dir=known.run_dir, probe=config.probe), description=__doc__)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    args = parse_args(argv)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  if args.out is None and not RunDir(args.run_dir).writable():
    print(f"error: run directory {args.run_dir} is not writable: give --out FILE.jsonl to probe it into another file",
          file=sys.stderr)
    return EXIT_USAGE
  setup_process("probe", device=args.probe.device)  # before JAX loads: the device is a flag
  from common.checkpoints import NoCheckpointError  # JAX, Orbax: after setup_process

  prober = None
  try:
    prober = RunProber(args.run_dir, args.probe, figures_dir=figures_dir(args.out))
    eligible = prober.eligible_steps()
    if not eligible:
      raise NoCheckpointError(f"run directory {args.run_dir} has no checkpoint to probe")
    missing = sorted(set(args.steps) - set(eligible))
    if missing:
      raise NoCheckpointError(f"no probe checkpoint for step(s) {missing} in {args.run_dir} (have: {eligible})")
  except NoCheckpointError as error:
    if prober is not None:
      prober.close()
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE

  try:
    # Rows for the run's own plasticity.jsonl come from one prober at a time (the probe worker holds the same lock).
    with (RunDir(args.run_dir).lock("offline probes", PROBE_LOCK) if args.out is None else contextlib.nullcontext()):
      probed, out_path = _probe(prober, args)
  except ConfigError as error:  # the probe lock is held, or a checkpoint does not match config.json or load
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  finally:
    prober.close()
  print(f"probed {probed} checkpoint(s); rows in {out_path}")
  return 0


def figures_dir(out: Optional[str]) -> Optional[str]:
  """Where the heatmaps go: beside --out (other.jsonl -> other_figures/), or the run's own folder (None)."""
  return None if out is None else os.path.splitext(out)[0] + "_figures"


def _probe(prober, args: Args) -> tuple[int, str]:
  """Probes what `args` asks for; returns (checkpoints probed, the file the rows went to)."""
  log = MetricsLog(args.run_dir) if args.out is None else None
  out_path = log.path(PROBE_STREAM) if log else args.out
  done = probed_steps(out_path)

  def write(row: dict) -> None:
    if log is not None:
      log.write(PROBE_STREAM, row)
    else:
      with open(out_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    print(describe(row), flush=True)

  try:
    probed = probe_pending(prober, write, done, only=args.steps or None,
                           on_skip=lambda step, why: print(f"skipping step {step:,}: {why}", flush=True))
  finally:
    if log is not None:
      log.close()
  return probed, out_path


if __name__ == "__main__":
  sys.exit(main())
