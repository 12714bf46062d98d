"""Actor and evaluator processes: they join a job through its Reverb server and nothing else.

  python -m training.actor --server localhost:8000 --actor-id 3 [--evaluator]

An actor reads the job's configuration from the `job` table, steps
`num_envs_per_actor` games with one batched jitted epsilon-greedy call per step
(on CPU), writes n-step transitions to `replay`, refreshes its weights from
`params` in the background, and every second reports the agent steps it took and
the episodes it finished (real, unclipped scores) to the `events` queue. Its
epsilon follows the job's env steps, which arrive with the weights.

The evaluator plays `eval_episodes` games with `agent.eval_epsilon` each time the
published weights pass another `eval_every_env_steps`, and reports the scores.

train.py starts these for local actors exactly as a user starts them on another
host, so the same code path serves one machine and many.

An actor started by hand (not by a supervisor of train.py) asks the learner for its
actor id first, as an actor host does, and is refused an id the job's actors have.

Exit codes: 0 when stopped (SIGTERM/SIGINT), EXIT_SERVER_GONE when the job's
server went away or does not answer (the job ended), EXIT_USAGE without the job's
secret or when refused its id, anything else is a crash (the supervisor restarts).
"""

from __future__ import annotations

import argparse
import sys

from common import faults
from common.process_setup import setup_process
from common.processes import EXIT_USAGE, die_with_parent

# This module imports without JAX: setup_process("actor") must come first, and a prestarted actor waits with
# everything loaded (_warm_up). The work itself is training/actor_loop.py.


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="An actor (or the evaluator) of a running training job.")
  parser.add_argument("--server", required=True, help="address:port of the job's Reverb server")
  parser.add_argument("--actor-id", type=int, default=0, help="distinct per actor: it seeds the actor")
  parser.add_argument("--incarnation", type=int, default=0, help="restart count (a restarted actor gets fresh seeds)")
  parser.add_argument("--parent-pid", type=int, default=0, help="die with this process (set by the supervisor)")
  parser.add_argument("--evaluator", action="store_true", help="run the periodic evaluation instead of acting")
  args = parser.parse_args(argv)
  if args.parent_pid:
    die_with_parent(args.parent_pid)
  setup_process("actor")
  faults.at("actor-start")
  # After setup_process: JAX reads XLA's flags when it loads.
  from replay.messages import ForgedMessage, JoinRefused, NoSecretError
  from training.actor_loop import run_actor, run_evaluator

  try:
    if args.evaluator:
      return run_evaluator(args.server)
    return run_actor(args.server, args.actor_id, args.incarnation)
  except (NoSecretError, ForgedMessage) as error:  # no secret, or a job that is not signed with it
    print(f"error: actor {args.actor_id}: {error}", file=sys.stderr, flush=True)
  except JoinRefused as refusal:  # started by hand with an id the job's actors already have
    print(f"error: actor {args.actor_id}: the job at {args.server} refused it: {refusal}", file=sys.stderr, flush=True)
  return EXIT_USAGE


def _warm_up() -> None:
  """What a prestarted actor or evaluator imports before it knows its job (common.processes.Supervisor.prestart)."""
  setup_process("actor")
  import ale_py  # noqa: F401  (the emulator: envs/ loads it on first use)

  import training.actor_loop  # noqa: F401  (after setup_process: JAX reads XLA's flags when it loads)


if __name__ == "__main__":
  from common.processes import exit_now, warm_started

  argv = warm_started(sys.argv[1:], _warm_up)
  exit_now(main(argv) if argv is not None else 0)
