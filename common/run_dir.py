"""The run directory: its layout, who may write it (an OS lock), its job secret, and opening it.

One `train.py` run lives in one directory. Every path inside it is spelled here and nowhere else:

  config.json                  the run's RunConfig (training.config.save_config / load_config)
  checkpoints/<update>/        learner checkpoints: state, metadata, probe inputs (common.checkpoints)
  replay/<update>/             the Reverb checkpoint written together with learner checkpoint <update>
  replay/incoming/             where Reverb writes a checkpoint before it is moved to replay/<update>
  metrics/<stream>.jsonl       the metrics streams (common.metrics); resumes and lives are the directory's history
  metrics/<stream>.after-<update>-<n>.jsonl
                               rows a resume from checkpoint <update> moved out of <stream>.jsonl: written after
                               that checkpoint by the process that died, never seen by the restored run
  tb/                          TensorBoard event files
  plasticity/grad_cov_<update>.png   probe heatmaps
  eval/step<update>.json       eval.py results
  result.json                  bench/learn.py's final score of the run
  status.json                  how the run last ended when that was not a checkpoint (it diverged)
  train.lock, probe.lock       held (flock) by the process that writes the run, by the one that probes it
  job.secret                   the job's HMAC key, readable by its owner only
  abandoned/<UTC time>/        what an attempt that never reached its first checkpoint left (set_attempt_aside)

`RunDir.lock(role)` takes an OS lock (`fcntl.flock`), not a marker file: the kernel drops it when its process
dies, however it dies, so a SIGKILL never leaves a run locked. The holder writes its pid and role into the
lock file so a refused process can say who holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import sys
import time
from typing import Iterator

from common import faults
from common.files import failed_path, naming_the_path, tree_bytes, write_atomically, write_json_atomically
from common.validation import ConfigError

CONFIG_FILE = "config.json"
TRAIN_LOCK = "train.lock"
PROBE_LOCK = "probe.lock"
SWEEP_LOCK = "sweep.lock"  # in a sweep's root directory (sweep.py)
SECRET_FILE = "job.secret"
SECRET_BYTES = 32
ABANDONED_DIR = "abandoned"  # what attempts that never reached a first checkpoint left (RunDir.set_attempt_aside)
KEPT_BY_A_NEW_ATTEMPT = (TRAIN_LOCK, CONFIG_FILE, SECRET_FILE, ABANDONED_DIR)


def sweep_run_dir(root: str, variant: str, game: str, seed: int) -> str:
  """Where sweep.py puts a run of its grid: ROOT/<variant>/<game>/seed<seed>."""
  return os.path.join(root, variant, game, f"seed{seed}")


def sweep_variant(run_dir: str, game: str, seed: int) -> str | None:
  """The variant of a run laid out by `sweep_run_dir` (the directory two above it), or None when `run_dir` does not
  end in <variant>/<game>/seed<seed> for this game and seed."""
  parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
  if len(parts) >= 4 and parts[-1] == f"seed{seed}" and parts[-2] == game and parts[-3]:
    return parts[-3]
  return None


class RunLockedError(ConfigError):
  """Another live process holds the lock this one asked for."""


@dataclasses.dataclass(frozen=True)
class RunDir:
  """Paths of one run directory (nothing is created by constructing one)."""

  path: str

  @property
  def config_path(self) -> str:
    return os.path.join(self.path, CONFIG_FILE)

  @property
  def checkpoints_dir(self) -> str:
    return os.path.join(self.path, "checkpoints")

  @property
  def replay_dir(self) -> str:
    return os.path.join(self.path, "replay")

  @property
  def replay_incoming_dir(self) -> str:
    return os.path.join(self.replay_dir, "incoming")

  def replay_checkpoint_dir(self, step: int) -> str:
    return os.path.join(self.replay_dir, str(step))

  @property
  def metrics_dir(self) -> str:
    return os.path.join(self.path, "metrics")

  def stream_path(self, stream: str) -> str:
    return os.path.join(self.metrics_dir, f"{stream}.jsonl")

  def moved_rows_path(self, stream: str, after_step: int) -> str:
    """A new file for `stream`'s rows written after checkpoint `after_step` that a resume moved out."""
    for n in range(1, 10_000):
      path = os.path.join(self.metrics_dir, f"{stream}.after-{after_step}-{n}.jsonl")
      if not os.path.exists(path):
        return path
    raise FileExistsError(f"too many resumes from checkpoint {after_step} in {self.metrics_dir}")

  @property
  def tensorboard_dir(self) -> str:
    return os.path.join(self.path, "tb")

  def heatmap_path(self, step: int) -> str:
    return os.path.join(self.path, "plasticity", f"grad_cov_{step}.png")

  def eval_json_path(self, step: int) -> str:
    return os.path.join(self.path, "eval", f"step{step}.json")

  @property
  def bench_result_path(self) -> str:
    return os.path.join(self.path, "result.json")

  @property
  def status_path(self) -> str:
    return os.path.join(self.path, "status.json")

  @property
  def secret_path(self) -> str:
    return os.path.join(self.path, SECRET_FILE)

  # -- what is there --------------------------------------------------------------------------------------------

  def is_run(self) -> bool:
    return os.path.isfile(self.config_path)

  def is_empty(self, ignore: tuple[str, ...] = ()) -> bool:
    """True when the directory does not exist or holds nothing (but the names in `ignore`)."""
    return not os.path.isdir(self.path) or not set(os.listdir(self.path)) - set(ignore)

  def writable(self) -> bool:
    return os.access(self.path, os.W_OK)

  def read_status(self) -> dict:
    """status.json ({} when the run has none: it never ended otherwise than at a checkpoint)."""
    try:
      with open(self.status_path, encoding="utf-8") as handle:
        return json.load(handle)
    except FileNotFoundError:
      return {}
    except (OSError, json.JSONDecodeError) as error:
      raise ConfigError(f"{self.status_path} cannot be read: {error}") from None

  def write_status(self, status: dict) -> None:
    write_json_atomically(self.status_path, status, sort_keys=True)

  def clear_status(self) -> None:
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.status_path)

  # -- opening --------------------------------------------------------------------------------------------------

  def check_new(self, ignore: tuple[str, ...] = ()) -> None:
    """ConfigError unless a new run may start here (nothing is written); `ignore`: names that may be there."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ConfigError(f"{self.path} exists and is not a directory")
    if not self.is_empty(ignore):
      raise ConfigError(f"run directory {self.path} already exists; pass --resume to continue it, "
                        "or choose another --run-dir")

  def check_resumable(self) -> bool:
    """True when this run directory has a complete checkpoint to resume from; False when it never reached its
    first (it starts again from its config.json: `set_attempt_aside`); ConfigError when it cannot be resumed or
    is in use. Nothing is written."""
    if not os.path.isdir(self.path):
      raise ConfigError(f"run directory {self.path} does not exist: nothing to resume")
    if not self.is_run():
      raise ConfigError(f"{self.path} has no {CONFIG_FILE}: it is not a run directory")
    if not self.writable():
      raise ConfigError(f"run directory {self.path} is not writable: it can be evaluated and probed, not resumed")
    holder = self.holder_pid()
    if holder is not None:  # before the checkpoints: a run training towards its first one has none yet
      raise ConfigError(f"run directory {self.path} is in use by pid {holder}; stop that process first, "
                        "or choose another directory")
    if os.path.lexists(self.secret_path):  # a missing one is made anew on resume; a damaged one is not guessed at
      read_secret_file(self.secret_path)
    return self.has_checkpoint()

  def has_checkpoint(self) -> bool:
    """At least one complete checkpoint (loadable or not) is there."""
    from common.checkpoints import CheckpointStore  # JAX, Orbax: this module imports without them (flags first)

    return os.path.isdir(self.checkpoints_dir) and bool(CheckpointStore(self.checkpoints_dir, read_only=True).steps())

  def disk_full_message(self, error: BaseException) -> str:
    """One line for a write that found the run's device full (common.files.no_space_left): where, what is free,
    what one checkpoint of the run takes, and the way on. RunCheckpoints.save writes a checkpoint whole or not
    at all, so the newest complete one is still there to resume from."""
    where = failed_path(error) or self.path
    free_bytes = shutil.disk_usage(self.path).free
    newest = [os.path.join(root, name) for root in (self.checkpoints_dir, self.replay_dir)
              if (name := _newest_step_name(root)) is not None]
    checkpoint_bytes = sum(tree_bytes(path) for path in newest)
    needed = (f"a checkpoint of this run (weights and replay) takes {_megabytes(checkpoint_bytes)}" if newest
              else "the run has no checkpoint yet to size the next one by")
    return (f"no space left on the device of {self.path} (writing {where}): {_megabytes(free_bytes)} free, {needed}. "
            f"The newest complete checkpoint is kept: free space, then train.py --run-dir {self.path} --resume")

  def set_attempt_aside(self) -> str:
    """Moves what an attempt that never reached its first checkpoint left (metrics, replay files, an unfinished
    checkpoint) into abandoned/<UTC time>/, keeping config.json, the job secret and the lock; returns that folder.
    Call it holding the run's lock."""
    aside = os.path.join(self.path, ABANDONED_DIR, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    os.makedirs(aside)
    for name in sorted(set(os.listdir(self.path)) - set(KEPT_BY_A_NEW_ATTEMPT)):
      os.rename(os.path.join(self.path, name), os.path.join(aside, name))
    return aside

  @classmethod
  def for_reading(cls, path: str) -> "RunDir":
    """An existing run directory to read (eval, probes, reports); read-only ones are fine."""
    run = cls(os.path.abspath(path))
    if not os.path.isdir(run.path):
      raise ConfigError(f"run directory {path} does not exist")
    if not run.is_run():
      raise ConfigError(f"{path} has no {CONFIG_FILE}: it is not a run directory")
    return run

  # -- the lock -------------------------------------------------------------------------------------------------

  @contextlib.contextmanager
  def lock(self, role: str, name: str = TRAIN_LOCK) -> Iterator[None]:
    """Holds the OS lock `name` of this run while the block runs; RunLockedError (naming the holder's pid) if a
    live process has it. Creates the directory if needed."""
    os.makedirs(self.path, exist_ok=True)
    with hold_lock(os.path.join(self.path, name), role, what=f"run directory {self.path}"):
      yield

  def holder_pid(self, name: str = TRAIN_LOCK):
    """The pid of the live process holding lock `name`, or None (a test of the lock, released at once)."""
    try:
      fd = os.open(os.path.join(self.path, name), os.O_RDONLY)
    except OSError:
      return None
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
      except OSError:
        return _read_holder(fd).get("pid", "?")
      return None
    finally:
      os.close(fd)

  # -- the job secret -------------------------------------------------------------------------------------------

  def job_secret(self, *, create: bool = False) -> bytes:
    """The job's HMAC key (hex in job.secret, mode 0600); made once, with `create`, and kept across resumes."""
    if create and not os.path.exists(self.secret_path):
      try:
        fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
      except FileExistsError:
        pass
      else:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
          handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
    return read_secret_file(self.secret_path)


def read_secret_file(path: str) -> bytes:
  """A job secret written by `RunDir.job_secret` (for actor hosts: a copy named by --secret-file): SECRET_BYTES
  bytes as hex. ConfigError, with the way on, for anything else (empty, cut short, not hex, not a file)."""
  try:
    with open(path, encoding="ascii") as handle:
      text = handle.read(4 * SECRET_BYTES).strip()
  except FileNotFoundError:
    raise ConfigError(f"the job secret {path} does not exist") from None
  except (OSError, ValueError) as error:  # a directory, no permission, not ASCII
    raise ConfigError(f"the job secret {path} cannot be read: {error}; {_SECRET_WAY_ON}") from None
  secret = secret_from_hex(text)
  if secret is None:
    raise ConfigError(f"the job secret {path} is damaged: it should hold {2 * SECRET_BYTES} hex digits, it holds "
                      f"{len(text)} characters; {_SECRET_WAY_ON}")
  return secret


def secret_from_hex(text: str) -> bytes | None:
  """The job secret that `text` spells (SECRET_BYTES bytes as hex, as job.secret and DQN_JOB_SECRET hold it), or
  None if it spells none."""
  try:
    secret = bytes.fromhex(text)
  except ValueError:
    return None
  return secret if len(secret) == SECRET_BYTES else None


_SECRET_WAY_ON = ("copy it back from an actor host's --secret-file copy, or delete it and resume: the learner makes a "
                  "new one (actor hosts then need the new copy)")


@contextlib.contextmanager
def hold_lock(path: str, role: str, *, what: str) -> Iterator[None]:
  """`fcntl.flock` on `path` for the block (shared by run directories and sweeps); RunLockedError if held."""
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:
    raise ConfigError(f"cannot lock {what}: {error.strerror} ({path})") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      holder = _read_holder(fd)
      raise RunLockedError(f"{what} is in use by pid {holder.get('pid', '?')} ({holder.get('role', 'unknown role')}"
                           f"{', since ' + holder['since'] if 'since' in holder else ''}); stop that process first, "
                           "or choose another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "role": role, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "command": sys.argv}).encode() + b"\n", 0)
    yield
  finally:
    os.close(fd)  # releases the lock (the kernel also does when the process dies)


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}


# ------------------------------------------------------------------------------------------------------------------
# The checkpoint record: learner state, counters and probe inputs (common.checkpoints), the replay written with
# them, and where every metrics stream stood. One consistent point of the run, restored as a whole or not at all.

PROBE_STREAM = "plasticity"  # written by the probe worker, keyed by checkpoint step; every other stream by the learner
RESUMES_STREAM = "resumes"  # the log of the directory's resumes: kept whole (it describes the cuts themselves)
LIVES_STREAM = "lives"  # one row per learner life, the code it ran (common.provenance): kept whole, a history too
HISTORY_STREAMS = (RESUMES_STREAM, LIVES_STREAM)  # never cut at a resume
REPLAY_RECORD = "run_checkpoint.json"  # in replay/<update>/: which learner checkpoint it belongs to, its files' sizes
QUIET_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore", "jax")


class NoConsistentCheckpointError(ConfigError):
  """No checkpoint of the run has its learner state and its replay both whole."""


@dataclasses.dataclass
class Restored:
  state: object
  metadata: dict
  step: int
  server: object
  """What `server_factory` returned (None when the run keeps no replay)."""
  replay: str
  """`restored`, `restored (legacy)` (a run directory from before the record), `empty` (--resume-without-replay)
  or `not checkpointed` (the run keeps none)."""
  skipped: list
  """One line per newer checkpoint passed over, and why."""
  notes: list = dataclasses.field(default_factory=list)
  """Anything else the user should know about this restore."""


class RunCheckpoints:
  """Writes and restores the run's checkpoints as consistent points.

  `save` writes, in this order: the replay (Reverb writes into replay/incoming/, which is then renamed to
  replay/<update>/ with a record naming the learner checkpoint's id and each file's size), then the learner
  checkpoint (Orbax, atomic) whose metadata holds the same id and the byte length of every metrics stream.
  A crash anywhere leaves either a complete pair or a replay without its learner checkpoint, which no restore
  uses. `restore` takes the newest checkpoint whose learner state loads and whose replay is its own and whole,
  starts the server on that replay, and moves the stream rows written after it aside.
  """

  def __init__(self, run: RunDir, *, keep_last: int = 3, keep_every_steps=None, keep_fn=None, with_replay: bool = True):
    from common.checkpoints import CheckpointStore  # JAX, Orbax: this module imports without them (flags first)

    self.run = run
    self.with_replay = with_replay
    self.keep_last = keep_last
    self.store = CheckpointStore(run.checkpoints_dir, keep_last=keep_last, keep_every_steps=keep_every_steps,
                                 keep_fn=keep_fn)

  def steps(self) -> list[int]:
    return self.store.steps()

  # -- saving ---------------------------------------------------------------------------------------------------

  def save(self, step: int, state, metadata: dict, *, probe_inputs=None, server=None) -> None:
    """One consistent point at `step`; `server` (a ReplayServer) is checkpointed with it when the run keeps replay."""
    checkpoint_id = secrets.token_hex(8)
    metadata = {**metadata, "checkpoint_id": checkpoint_id, "metrics_bytes": self._stream_sizes(),
                "replay_checkpoint": None}
    if self.with_replay:
      with naming_the_path(self.run.replay_incoming_dir):
        metadata["replay_checkpoint"] = self._save_replay(step, checkpoint_id, server)
    faults.at("learner-save")
    with naming_the_path(os.path.join(self.run.checkpoints_dir, str(step))):
      self.store.save(step, state, metadata, probe_inputs=probe_inputs, replace=step in self.store.steps())
    faults.at("checkpoint-saved")
    self._prune_replay()

  def _stream_sizes(self) -> dict:
    """Bytes of every learner-written stream now (rows are flushed as they are written)."""
    sizes = {}
    if os.path.isdir(self.run.metrics_dir):
      for name in os.listdir(self.run.metrics_dir):
        stream = _stream_name(name)
        if stream is not None and stream != PROBE_STREAM and stream not in HISTORY_STREAMS:
          sizes[stream] = os.path.getsize(os.path.join(self.run.metrics_dir, name))
    return sizes

  def _save_replay(self, step: int, checkpoint_id: str, server) -> str:
    size_before = server.size()
    written = server.checkpoint()  # Reverb's own complete checkpoint (it writes DONE last), in replay/incoming/
    faults.at("replay-written")
    files = {name: os.path.getsize(os.path.join(written, name)) for name in os.listdir(written)}
    # The actors insert while Reverb writes: the snapshot's size lies between these two.
    record = {"step": step, "checkpoint_id": checkpoint_id, "files": files, "size_before": size_before,
              "size_after": server.size()}
    write_json_atomically(os.path.join(written, REPLAY_RECORD), record, indent=None)
    target = self.run.replay_checkpoint_dir(step)
    if os.path.exists(target):  # the final checkpoint of a step saved before: its learner checkpoint is replaced next
      shutil.rmtree(target)
    os.rename(written, target)
    faults.at("replay-moved")
    return checkpoint_id

  def _prune_replay(self) -> None:
    """Keeps the replay of the newest `keep_last` learner checkpoints; removes every other (and any leftover)."""
    keep = {str(step) for step in self.store.steps()[-self.keep_last:]} | {os.path.basename(self.run.replay_incoming_dir)}
    if os.path.isdir(self.run.replay_dir):
      for name in os.listdir(self.run.replay_dir):
        if name not in keep:
          shutil.rmtree(os.path.join(self.run.replay_dir, name), ignore_errors=True)

  # -- restoring ------------------------------------------------------------------------------------------------

  def restore(self, template, server_factory, *, without_replay: bool = False) -> Restored:
    """The newest consistent point: its learner state (shaped like `template`) and `server_factory(replay_path)`
    (None: an empty replay) started on its replay. Changes nothing on disk; see `cut_streams` for the streams."""
    skipped: list[str] = []
    self._clear_incoming()
    steps = self.store.steps()  # one listing for the whole restore: nothing writes the run meanwhile (the lock)
    for step in reversed(steps):
      try:
        with quiet_loggers():
          state, metadata, _ = self.store.restore(template, step=step)
      except Exception as error:  # a damaged checkpoint: one line, then the one before
        skipped.append(f"checkpoint {step}: its learner state does not load ({_first_line(error)})")
        continue
      if not self.with_replay:
        return Restored(state, metadata, step, server_factory(None), "not checkpointed", skipped)
      if without_replay:
        return Restored(state, metadata, step, server_factory(None), "empty", skipped)
      if "checkpoint_id" not in metadata and step == steps[-1]:
        legacy = self._legacy_replay()
        if legacy is not None:  # a run directory from before the consistent record: the old pairing, said so
          note = (f"checkpoint {step} was written before replay/<update> records existed: its replay is the newest one "
                  f"Reverb kept ({os.path.basename(legacy)}), which cannot be checked against it")
          return Restored(state, metadata, step, server_factory(legacy), "restored (legacy)", skipped, [note])
      problem = self.replay_problem(step, metadata)
      if problem is None:
        try:
          return Restored(state, metadata, step, server_factory(self.run.replay_checkpoint_dir(step)), "restored", skipped)
        except RuntimeError as error:  # Reverb: "corrupted record", a torn file
          problem = f"its replay does not load ({_first_line(error)})"
      skipped.append(f"checkpoint {step}: {problem}")
    if not steps:
      raise NoConsistentCheckpointError(f"run directory {self.run.path} has no complete checkpoint to resume from")
    if len(skipped) == len(steps) and all("learner state" in line for line in skipped):
      raise NoConsistentCheckpointError(f"no checkpoint of {self.run.path} loads: " + "; ".join(skipped))
    raise NoConsistentCheckpointError(
        f"no checkpoint of {self.run.path} has its learner state and its replay both whole ({'; '.join(skipped)}); "
        "--resume --resume-without-replay continues from the newest learner state with an empty replay")

  def replay_record(self, step: int) -> dict:
    """replay/<step>/run_checkpoint.json: the learner checkpoint's id, the files' sizes, the replay size around it."""
    with open(os.path.join(self.run.replay_checkpoint_dir(step), REPLAY_RECORD), encoding="utf-8") as handle:
      return json.load(handle)

  def replay_problem(self, step: int, metadata: dict):
    """None if replay/<step>/ is the replay written with this learner checkpoint and is whole, else what is wrong."""
    path = self.run.replay_checkpoint_dir(step)
    if metadata.get("replay_checkpoint") is None:
      return "it was saved without a replay"
    try:
      record = self.replay_record(step)
    except FileNotFoundError:
      return f"its replay {path} is missing"
    except (OSError, ValueError) as error:
      return f"its replay record cannot be read ({error})"
    if record.get("checkpoint_id") != metadata.get("replay_checkpoint"):
      return f"{path} is the replay of another checkpoint of step {step} (id {record.get('checkpoint_id')})"
    for name, size in record.get("files", {}).items():
      file = os.path.join(path, name)
      if not os.path.exists(file) or os.path.getsize(file) != size:
        return f"its replay file {name} is missing or has another size than when it was written"
    return None

  def _legacy_replay(self):
    """The newest complete Reverb checkpoint directly in replay/ (the layout before replay/<update>), or None."""
    if not os.path.isdir(self.run.replay_dir):
      return None
    found = [os.path.join(self.run.replay_dir, name) for name in sorted(os.listdir(self.run.replay_dir))
             if not name.isdigit() and name != os.path.basename(self.run.replay_incoming_dir)
             and os.path.exists(os.path.join(self.run.replay_dir, name, "DONE"))]
    return found[-1] if found else None

  def _clear_incoming(self) -> None:
    """Reverb would load a leftover in replay/incoming/ (a write a crash interrupted) instead of the chosen replay."""
    if os.path.isdir(self.run.replay_incoming_dir):
      for name in os.listdir(self.run.replay_incoming_dir):
        shutil.rmtree(os.path.join(self.run.replay_incoming_dir, name), ignore_errors=True)

  # -- the streams ----------------------------------------------------------------------------------------------

  def cut_streams(self, restored: Restored) -> dict:
    """Moves every stream row written after the restored checkpoint into <stream>.after-<step>-<n>.jsonl.

    Learner streams are cut at the byte length the checkpoint recorded (a stream it did not know is moved
    whole); the probe stream loses the rows of checkpoints newer than the restored one. Returns
    {stream: rows moved}. The streams' counters are then monotonic across the resume.
    """
    moved = {}
    recorded = restored.metadata.get("metrics_bytes")
    if not os.path.isdir(self.run.metrics_dir):
      return moved
    for name in sorted(os.listdir(self.run.metrics_dir)):
      stream = _stream_name(name)
      if stream is None or stream in HISTORY_STREAMS:
        continue
      path = self.run.stream_path(stream)
      with open(path, "rb") as handle:
        data = handle.read()
      if stream == PROBE_STREAM:
        keep, later = _split_rows(data, lambda row: row.get("step", 0) <= restored.step)
      elif recorded is None:  # a checkpoint from before metrics_bytes were recorded: the streams stay as they are
        continue
      else:
        cut = recorded.get(stream, 0)
        keep, later = data[:cut], data[cut:]
      if later.strip():
        write_atomically(self.run.moved_rows_path(stream, restored.step), later)
        write_atomically(path, keep)
        moved[stream] = later.count(b"\n") + (not later.endswith(b"\n"))
    return moved


def _stream_name(file_name: str):
  """`train` for train.jsonl; None for moved-rows files and anything else."""
  if not file_name.endswith(".jsonl") or ".after-" in file_name:
    return None
  return file_name[: -len(".jsonl")]


def _split_rows(data: bytes, keep_row) -> tuple[bytes, bytes]:
  keep, later = [], []
  for line in data.splitlines(keepends=True):
    try:
      row = json.loads(line)
    except ValueError:  # a torn last line
      later.append(line)
      continue
    (keep if keep_row(row) else later).append(line)
  return b"".join(keep), b"".join(later)


def _newest_step_name(directory: str) -> str | None:
  steps = [name for name in os.listdir(directory) if name.isdigit()] if os.path.isdir(directory) else []
  return max(steps, key=int) if steps else None


def _megabytes(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:,.1f} MiB"


def _first_line(error: BaseException) -> str:
  return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


@contextlib.contextmanager
def quiet_loggers(names=QUIET_LOGGERS) -> Iterator[None]:
  """Orbax and TensorStore log a long asyncio traceback for a checkpoint that does not load; the caller says it in
  one line instead."""
  loggers = [logging.getLogger(name) for name in names]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)
