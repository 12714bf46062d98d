"""Compare agent variants across run directories: report.md, summary.json and PNG figures.

  python compare.py runs/sweep_ln --out report/            # every run directory below runs/sweep_ln
  python compare.py runs/pong-dqn runs/pong-ln --out report/ --reps 5000

Runs are grouped into variants by the config fields that define the agent (game, seed
and how a run ran are ignored) and each variant is named by the fields where it
departs from the rest (`dqn`, `layer_norm`, `layer_norm+wd=1e-4`). Per game: learning
curves and final scores; over games: mean, median and IQM of human-normalised scores
and probabilities of improvement with stratified bootstrap intervals (Agarwal et al.
2021); plasticity metrics over training when runs have metrics/plasticity.jsonl. Runs
still training are read as they stand and marked in progress. A run that cannot be read
(a damaged config.json, a torn line inside a metrics file) is left out and named, on the
terminal and in the report, and so are rows whose return is not a finite number.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from common.process_setup import setup_process  # noqa: E402

setup_process("tool")  # before JAX, TensorFlow and Reverb load

from common.run_scores import LAST_EPISODES  # noqa: E402
from common.validation import ConfigError  # noqa: E402
from reports import stats  # noqa: E402
from reports.report import Options, build_summary, write_report  # noqa: E402
from reports.runs import group_variants, load_runs  # noqa: E402
from reports.terminal import print_tables  # noqa: E402

EXIT_USAGE = 2


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories, or directories holding them (searched recursively)")
  parser.add_argument("--out", default="report", help="output directory for report.md, summary.json and the PNGs (default: report)")
  parser.add_argument("--reps", type=int, default=stats.DEFAULT_REPS, help="bootstrap replicates (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed (default: %(default)s)")
  parser.add_argument("--confidence", type=float, default=stats.DEFAULT_CONFIDENCE, help="interval level (default: %(default)s)")
  parser.add_argument("--last-episodes", type=int, default=LAST_EPISODES,
                      help="training episodes averaged for a run's final score when it has no evaluation (default: %(default)s)")
  parser.add_argument("--curve-points", type=int, default=50, help="env-step bins of the learning curves (default: %(default)s)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  try:
    if args.reps < 1:
      raise ConfigError(f"--reps={args.reps} must be at least 1")
    if not 0 < args.confidence < 1:
      raise ConfigError(f"--confidence={args.confidence} must be between 0 and 1")
    if args.last_episodes < 1 or args.curve_points < 1:
      raise ConfigError("--last-episodes and --curve-points must be at least 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
      raise ConfigError(f"--out {args.out} exists and is not a directory")
    runs, skipped = load_runs(args.paths)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE

  variants = group_variants(runs)
  options = Options(reps=args.reps, seed=args.seed, confidence=args.confidence, last_episodes=args.last_episodes,
                    curve_points=args.curve_points)
  for run in skipped:
    print(f"warning: left out {run.run_dir}: {run.reason}", file=sys.stderr)
  for run in runs:
    if run.left_out:
      print(f"warning: {run.run_dir}: left out of the scores: "
            + ", ".join(f"{count} {what}" for what, count in run.left_out.items()), file=sys.stderr)
  summary = build_summary(runs, variants, options, skipped)
  command = "python compare.py " + " ".join(shlex.quote(a) for a in argv)
  written = write_report(summary, args.out, command)
  in_progress = sum(v["in_progress"] for v in summary["variants"])
  print(f"{len(runs)} runs ({in_progress} in progress{f', {len(skipped)} left out' if skipped else ''}) in "
        f"{len(variants)} variants: "
        + ", ".join(f"{v.name} ({len(v.runs)})" for v in variants))
  print_tables(summary)
  print(f"wrote {', '.join(os.path.relpath(path, args.out) for path in written)} to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
