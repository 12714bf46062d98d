"""Train a Double DQN agent on an Atari game: actors, a Reverb server and a learner in one supervised run.

  python train.py --game pong --preset atari100k --seed 0 --run-dir runs/pong-ln --agent.layer-norm
  python train.py --run-dir runs/pong-ln --resume                    # continue from the last checkpoint
  python train.py --role learner --listen 10.0.0.5:8000 --game pong  # multi-host: learner + server here
  python train.py --role actor --server 10.0.0.5:8000                # ... and actors on other hosts

Read top to bottom: parse and validate the config (nothing starts before it is
valid), check the run directory against --resume, and take its lock; then hand
the run to `training.learner_process.LearnerRun` (roles all and learner), which
starts the Reverb server inside this process, restores or initialises the
learner, starts the actors (`python -m training.actor`, the same command a remote
host runs) and the probe worker, and trains (docs/design.md, "The process tree").
Role actor joins a job running elsewhere and supervises this host's actors.
Ctrl-C or SIGTERM ends either with a final checkpoint; every child process is
stopped on every exit path. A bad flag, directory or port is one `error: ...`
line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import uuid

from common.process_setup import set_gpu_memory, setup_process  # noqa: E402

setup_process("tool")  # before JAX, TensorFlow and Reverb load

import tyro  # noqa: E402

from common.files import failed_path, no_space_left  # noqa: E402
from common.processes import EXIT_FAILED, EXIT_USAGE, StopRequest, Supervisor  # noqa: E402
from common.run_dir import TRAIN_LOCK, RunDir, read_secret_file  # noqa: E402
from common.validation import ConfigError  # noqa: E402
from training.config import PRESET_NAMES, PRESETS, RunConfig, config_differences, load_config  # noqa: E402
from training.learner_process import LearnerRun  # noqa: E402

# This module imports without JAX, TensorFlow and Reverb, so that a bad flag fails in half a second
# (tests/test_training_config.py); the functions below import them once the role needs them.


# ----------------------------------------------------------------------------------------------------------------
# Configuration


def parse_config(argv: list[str]) -> RunConfig:
  """The run's config: a preset (or, with --resume, the saved config.json) overridden by flags."""
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--preset", default="dqn_zoo")
  pre.add_argument("--resume", action="store_true")
  pre.add_argument("--run-dir", "--run_dir", dest="run_dir")
  known, _ = pre.parse_known_args(argv)
  if known.preset not in PRESET_NAMES:
    raise ConfigError(f"preset={known.preset!r} is not one of {', '.join(PRESET_NAMES)}")

  if known.resume and "-h" not in argv and "--help" not in argv:
    if not known.run_dir:
      raise ConfigError("resume=True needs --run-dir of the run to continue")
    saved = load_config(known.run_dir)
    config = tyro.cli(RunConfig, default=dataclasses.replace(saved, resume=True, resume_without_replay=False), args=argv, description=__doc__)
    changed = config_differences(saved, config)
    if changed:
      raise ConfigError(
          f"--resume keeps the run's own config; these flags differ from {known.run_dir}/config.json: {', '.join(changed)}"
      )
    return config
  return tyro.cli(RunConfig, default=PRESETS[known.preset], args=argv, description=__doc__)


def check_run_dir(config: RunConfig) -> tuple[str, bool]:
  """(the run directory, whether it starts anew), checked against --resume; ConfigError before anything is
  written. A --resume of a run that never reached its first checkpoint starts it anew from its config.json."""
  run = RunDir(config.resolved_run_dir)
  if config.resume:
    return run.path, not run.check_resumable()
  run.check_new(ignore=(TRAIN_LOCK,))  # the lock of an attempt that stopped at once; a live holder is refused next
  return run.path, True


def start_again(config: RunConfig, run: RunDir) -> RunConfig:
  """A run that never reached its first checkpoint (killed in its first minutes): what it left goes aside, and it
  starts anew from its own config.json. Under the run's lock."""
  if run.has_checkpoint():  # a run resumed in the same moment saved its first checkpoint first
    return config
  aside = run.set_attempt_aside()
  print(f"note: {run.path} never reached its first checkpoint, so there is nothing to resume: starting it anew from "
        f"its config.json (what the attempt left is in {aside})", flush=True)
  return dataclasses.replace(config, resume=False)


# ----------------------------------------------------------------------------------------------------------------
# Role actor: this host's actors join a job running elsewhere.


def run_actor_host(config: RunConfig, stop: StopRequest) -> int:
  from replay.messages import HOST_ENV, SECRET_ENV  # Reverb, TensorFlow: only in the roles that talk to a server

  key = read_secret_file(config.secret_file)
  actor_ids = list(range(config.first_actor_id, config.first_actor_id + config.resolved_num_actors))
  job, host = join_job(config, key, actor_ids)
  print(f"joined job at {config.server} ({job['config']['game']}): actors {actor_ids[0]}..{actor_ids[-1]}", flush=True)
  supervisor = Supervisor(lambda event: print(f"supervisor: {event}", flush=True),
                          env={SECRET_ENV: key.hex(), HOST_ENV: host})
  try:
    for actor_id in actor_ids:
      supervisor.add(f"actor-{actor_id}", ["training.actor", "--server", config.server, "--actor-id", str(actor_id)])
    while not stop.event.is_set() and not supervisor.all_finished():
      supervisor.check()
      stop.event.wait(0.5)
  finally:
    supervisor.stop()
  print("the job has ended" if not stop.event.is_set() else "stopped", flush=True)
  return 0


def join_job(config: RunConfig, key: bytes, actor_ids: list[int], timeout_s: float = 30.0) -> tuple[dict, str]:
  """Asks the job's learner to take this host's actor ids: (the job once it has said yes, this host's name),
  ConfigError if not."""
  # Reverb, TensorFlow: only in the roles that talk to a server
  import reverb

  from replay.messages import ForgedMessage, JoinRefused, ask_to_join, fetch_job

  client = reverb.Client(config.server)
  host = uuid.uuid4().hex
  try:
    fetch_job(client, key, timeout_s=timeout_s)
    return ask_to_join(client, key, host, actor_ids, timeout_s), host
  except JoinRefused as refusal:
    raise ConfigError(f"the job at {config.server} refused this host: {refusal}") from None
  except ForgedMessage:
    raise ConfigError(f"the job at {config.server} is not signed with the secret in {config.secret_file}: "
                      "copy RUN_DIR/job.secret from the learner's host") from None
  except TimeoutError:
    raise ConfigError(f"the job at {config.server} did not answer this host's request to join within {timeout_s:.0f} s") from None
  except Exception as error:
    raise ConfigError(f"no training job answers at {config.server}: {type(error).__name__}: {error}") from None


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  stop = StopRequest("writing a final checkpoint and stopping (this takes a few seconds)")
  try:
    config = parse_config(argv)
    if config.role == "actor":
      return run_actor_host(config, stop)
    run_dir, anew = check_run_dir(config)
    if not config.resume:
      # config.json records what was used: the run dir, the actor count, the optimizer's reference values.
      num_actors = config.num_actors if config.role == "learner" else config.resolved_num_actors
      agent = dataclasses.replace(
          config.agent, learning_rate=config.agent.resolved_learning_rate, optimizer_eps=config.agent.resolved_optimizer_eps)
      config = dataclasses.replace(config, run_dir=run_dir, num_actors=num_actors, agent=agent)
    _, port = config.listen_address()
    if port is not None:
      from replay.server import check_port_free  # Reverb, TensorFlow: once the flags are valid

      check_port_free(port)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  set_gpu_memory(config.gpu_memory_fraction, preallocate=True)  # before JAX's first computation (the learner's)
  from common.checkpoints import NoCheckpointError  # JAX, Orbax: once the flags are valid

  threading.excepthook = _one_line_when_a_writer_thread_finds_the_disk_full
  try:
    with RunDir(run_dir).lock(f"train.py, role {config.role}"):  # refused at once if another process writes the run
      if config.resume and anew:
        config = start_again(config, RunDir(run_dir))
      elif not config.resume:
        RunDir(run_dir).check_new(ignore=(TRAIN_LOCK,))  # a run started in the same moment took it first
      return LearnerRun(config, run_dir, stop).run()
  except (NoCheckpointError, ConfigError) as error:  # nothing to resume; in use; a name the network lacks
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  except Exception as error:
    if not no_space_left(error):
      raise
    print(f"error: {RunDir(run_dir).disk_full_message(error)}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def _one_line_when_a_writer_thread_finds_the_disk_full(args) -> None:
  """threading.excepthook: TensorBoard's writer thread dies of a full disk with a traceback; this says it in one
  line (the main thread's next write ends the run with the whole message)."""
  if args.exc_value is not None and no_space_left(args.exc_value):
    print(f"warning: thread {getattr(args.thread, 'name', '?')} stopped: no space left on the device "
          f"({failed_path(args.exc_value) or 'it named no file'})", file=sys.stderr, flush=True)
  else:
    threading.__excepthook__(args)


if __name__ == "__main__":
  from common.log_filter import filtered_stderr
  from common.processes import exit_now

  with filtered_stderr():  # Reverb's C++ INFO lines and Orbax's restore warning, here and in every child process
    exit_code = main()
  exit_now(exit_code)
