"""Weights & Biases tracking of a run (`--track wandb`): its config, its metrics streams as they are written, and its
final scores.

The learner's process follows the run directory's `metrics/<stream>.jsonl` files, whichever process writes them
(the learner, the evaluator, the probe worker), and logs their new rows every `POLL_S` seconds from a thread, so
that W&B never slows an update. Each stream is its own W&B section with its own step axis (`eval/mean_return`
against `eval/env_steps`): the probe worker writes a checkpoint's probes after later training rows, and one shared
step would drop them. The W&B run id is made from the run directory's path (`run_id`), and what has been logged is
kept in `RUN/tracking/wandb.json` (rows per stream), so a resumed run continues the same W&B run from the next
row. At a resume the rows a crash left after the restored checkpoint are moved aside (common/run_dir.py) but stay
in W&B: the stretch between that checkpoint and the crash then appears twice there.

Offline (`wandb_mode=offline`, or `auto` when api.wandb.ai cannot be reached or no API key is set), the run is
written under `RUN/wandb/` and `wandb sync RUN/wandb/offline-run-*` uploads it later. wandb is optional
(`pip install -e ".[wandb]"`); RunConfig refuses `track=wandb` without it.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import re
import socket
import threading
from typing import Any, Optional

from common.files import write_json_atomically
from common.metrics import read_rows
from common.run_dir import PROBE_STREAM, RunDir
from common.run_scores import LAST_EPISODES, final_score
from envs.scores import human_normalized_score, reference_scores

STREAMS = ("train", "episodes", "eval", PROBE_STREAM, "remedies")
POLL_S = 10.0
WANDB_HOST = ("api.wandb.ai", 443)
MAX_ID_CHARS = 64
STATE_FILE = os.path.join("tracking", "wandb.json")


def run_id(run_dir: str) -> str:
  """The W&B run id of a run directory: its absolute path with every character W&B refuses in an id turned into
  `-` (`/home/me/runs/pong` -> `home-me-runs-pong`); a path longer than 64 characters keeps its end and a hash of
  the whole."""
  path = os.path.realpath(run_dir)
  text = re.sub(r"[^A-Za-z0-9_.-]+", "-", path).strip("-")
  if len(text) <= MAX_ID_CHARS:
    return text
  digest = hashlib.sha1(path.encode()).hexdigest()[:8]
  return text[-(MAX_ID_CHARS - 9):].lstrip("-") + "-" + digest


def resolve_mode(mode: str) -> str:
  """online or offline: `auto` is online when an API key is set and api.wandb.ai answers within 2 s."""
  if mode != "auto":
    return mode
  if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
    return "offline"
  if not (os.environ.get("WANDB_API_KEY") or _netrc_has_key()):
    return "offline"
  try:
    socket.create_connection(WANDB_HOST, timeout=2.0).close()
  except OSError:
    return "offline"
  return "online"


def _netrc_has_key() -> bool:
  """Whether `wandb login` left a key for api.wandb.ai in ~/.netrc."""
  try:
    return netrc.netrc().authenticators(WANDB_HOST[0]) is not None
  except (OSError, netrc.NetrcParseError):
    return False


def loggable(stream: str, row: dict) -> dict[str, Any]:
  """A metrics row as W&B keys `<stream>/<key>`: its numbers (not booleans as text: as 0/1) and short strings
  (a continual run's `task`, a remedy's name); lists and dicts stay in the JSONL."""
  out = {}
  for key, value in row.items():
    if isinstance(value, bool):
      out[f"{stream}/{key}"] = int(value)
    elif isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 64):
      out[f"{stream}/{key}"] = value
  return out


class WandbTracker:
  """One W&B run for one run directory; `poll()` logs the streams' new rows, `finish()` the final scores."""

  def __init__(self, config, run_dir: str):
    import wandb  # optional (setup.cfg extra `wandb`): only with --track wandb

    self.run_dir = RunDir(run_dir)
    self.state_path = os.path.join(self.run_dir.path, STATE_FILE)
    self.logged = self._load_state()
    self.mode = resolve_mode(config.wandb_mode)
    os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
    self.run = wandb.init(project=config.wandb_project, id=run_id(run_dir), name=os.path.basename(self.run_dir.path),
                          resume="allow", config=config.to_dict(), dir=self.run_dir.path, mode=self.mode,
                          settings=wandb.Settings(silent=True, console="off"))
    for stream in STREAMS:
      self.run.define_metric(f"{stream}/env_steps")
      self.run.define_metric(f"{stream}/*", step_metric=f"{stream}/env_steps")

  def _load_state(self) -> dict[str, int]:
    try:
      with open(self.state_path, encoding="utf-8") as handle:
        return {stream: int(count) for stream, count in json.load(handle).get("rows_logged", {}).items()}
    except (OSError, ValueError, AttributeError):
      return {}

  def poll(self) -> int:
    """Logs the rows written since the last poll; returns how many. A stream cut shorter than what was logged (a
    resume moved its newest rows aside) continues from its new end."""
    count = 0
    for stream in STREAMS:
      rows = read_rows(self.run_dir.stream_path(stream))
      start = min(self.logged.get(stream, 0), len(rows))
      for row in rows[start:]:
        if "env_steps" in row:
          self.run.log(loggable(stream, row))
          count += 1
      self.logged[stream] = len(rows)
    write_json_atomically(self.state_path, {"run_id": self.run.id, "rows_logged": self.logged}, sort_keys=True)
    return count

  def finish(self, summary: Optional[dict] = None) -> None:
    self.poll()
    if summary:
      self.run.summary.update(summary)
    self.run.finish()


def final_summary(run_dir: str, config) -> dict[str, Any]:
  """The run's final scores as compare.py takes them (common.run_scores.final_score) and its last plasticity row."""
  task = config.game if config.task_schedule else None
  score = final_score(run_dir, LAST_EPISODES, task)
  out = {"final/score": score.score, "final/score_source": score.source, "final/score_env_steps": score.env_steps,
         "final/score_episodes": score.episodes}
  if score.score is not None and config.game in reference_scores():
    out["final/human_normalized_score"] = human_normalized_score(config.game, score.score)
  probes = [row for row in read_rows(RunDir(run_dir).stream_path(PROBE_STREAM)) if "env_steps" in row]
  if probes:
    out.update({f"final/{k}": v for k, v in loggable(PROBE_STREAM, probes[-1]).items()})
  return {k: v for k, v in out.items() if v is not None}


class TrackerThread:
  """`WandbTracker.poll` every POLL_S seconds on a daemon thread; `stop()` logs the rest and the final scores."""

  def __init__(self, config, run_dir: str):
    self.config, self.run_dir = config, run_dir
    self.tracker = WandbTracker(config, run_dir)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="wandb-tracker", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(POLL_S):
      try:
        self.tracker.poll()
      except Exception as error:  # tracking is not worth a run: said once a poll, and the run goes on
        print(f"warning: W&B tracking: {error}", flush=True)

  def stop(self, finished: bool) -> None:
    self._stop.set()
    self._thread.join()  # (the tracker is this thread's alone from here)
    try:
      self.tracker.finish(final_summary(self.run_dir, self.config) if finished else None)
    except Exception as error:
      print(f"warning: W&B tracking: {error}", flush=True)
    where = "" if self.tracker.mode == "online" else f" (offline: wandb sync {self.run_dir}/wandb/offline-run-*)"
    print(f"W&B run {self.tracker.run.id} of project {self.config.wandb_project}{where}", flush=True)
