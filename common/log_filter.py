"""Keeps the libraries' log noise out of a run's output: a filter on file descriptor 2.

Reverb's C++ logging (`reverb/cc/platform/default/logging.h`) writes every message, INFO
included, straight to `std::clog` as `[reverb/cc/<file>:<line>] <message>`, with no level
in the line and no switch to turn it off (TF_CPP_MIN_LOG_LEVEL, GLOG_* and absl flags do not
reach it). Orbax warns through absl logging that restoring the probe inputs without a target
tree is "UNSAFE" (they are plain numpy arrays, saved and read on the same host). The only
place to drop such lines is the stream they are written to, so `filtered_stderr()` puts a
pipe on fd 2 and a thread copies to the real stderr every line that is not in `NOISE`.

Children started inside the block inherit the pipe as their fd 2, so one filter in train.py
covers the actors and the probe worker too. Everything else passes unchanged: the progress
lines (stdout is not touched), tracebacks, every other warning, and Reverb's own warnings
and errors (only the messages Reverb logs at INFO level are in `NOISE`).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sys
import threading
import time
from typing import Callable, Iterator

# Every REVERB_LOG(REVERB_INFO) message of dm-reverb 0.14 (reverb/cc/client.cc, platform/default/server.cc,
# platform/tfrecord_checkpointer.cc, reverb_service_impl.cc, writer.cc). Reverb's WARNING and ERROR
# messages look the same in the output and are not listed, so they still reach the user.
REVERB_INFO_MESSAGES = (
    "Sampler and server are owned by the same process",
    "Started replay server on port",
    "Shutting down replay server",
    "Initializing TFRecordCheckpointer in",
    "Loading latest checkpoint from",
    "Loading checkpoint from",
    "Loading and verifying metadata of the checkpointed tables",
    "Metadata for table",
    "Successfully loaded and verified metadata for all",
    "Still reading compressed trajectory data",
    "Completed reading compressed trajectory data",
    "Table .+ items have been successfully loaded from checkpoint",
    "Successfully loaded .+ tables from",
    "Stored checkpoint to",
    "The Writer will be closed although the server was Unavailable",
    "Received error when closing the stream",
)

REVERB_LINE_START = b"[reverb/cc/"
NOISE = (
    re.compile(r"^\[reverb/cc/[^\]]+\]\s*(?:" + "|".join(REVERB_INFO_MESSAGES) + ")"),
    # Orbax (absl logging, whichever format absl is set up with): the probe inputs are restored without
    # a target tree on purpose, they are numpy arrays with no sharding to get wrong.
    re.compile(r"`StandardCheckpointHandler` expects a target tree to be provided for restore"),
)

PARTIAL_LINE_AFTER_S = 0.2  # a line still without its newline is passed on after this long (a prompt, say) ...
MAYBE_NOISE_AFTER_S = 5.0  # ... or this long if it may be a Reverb line (Reverb writes a line in several pieces)


def is_noise(line: str) -> bool:
  """True for a line (without its newline) that `filtered_stderr` drops."""
  return any(pattern.search(line) for pattern in NOISE)


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool] = is_noise) -> Iterator[None]:
  """Inside the block, lines written to fd 2 by this process or any child started in it pass through `drop`.

  On exit fd 2 is the real stderr again and whatever the filter still holds is written out first
  (children that are still running keep writing through the filter until they end)."""
  try:
    sys.stderr.flush()
    real_stderr = os.dup(2)
  except (AttributeError, OSError, ValueError):  # no usable stderr (None, closed, detached): nothing to filter
    yield
    return
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)
  pump = threading.Thread(target=_pump, args=(read_end, real_stderr, drop), name="stderr-filter", daemon=True)
  pump.start()
  try:
    yield
  finally:
    with contextlib.suppress(AttributeError, OSError, ValueError):
      sys.stderr.flush()
    os.dup2(real_stderr, 2)  # closes this process's write end: the pump ends once no child holds one
    pump.join(timeout=2.0)
    if not pump.is_alive():
      os.close(real_stderr)


def _pump(read_end: int, real_stderr: int, drop: Callable[[str], bool]) -> None:
  pending, pending_since = b"", 0.0
  try:
    while True:
      ready, _, _ = select.select([read_end], [], [], PARTIAL_LINE_AFTER_S)
      if not ready:
        if pending and time.monotonic() - pending_since >= _partial_line_wait_s(pending):
          _write(real_stderr, pending)
          pending = b""
        continue
      chunk = os.read(read_end, 65536)
      if not chunk:
        break
      if not pending:
        pending_since = time.monotonic()
      *lines, rest = (pending + chunk).split(b"\n")
      if lines:
        pending_since = time.monotonic()
      pending = rest
      kept = b"".join(line + b"\n" for line in lines if not drop(line.decode("utf-8", "replace")))
      if kept:
        _write(real_stderr, kept)
    if pending and not drop(pending.decode("utf-8", "replace")):
      _write(real_stderr, pending)
  finally:
    os.close(read_end)


def _partial_line_wait_s(pending: bytes) -> float:
  maybe_reverb = pending[:len(REVERB_LINE_START)] == REVERB_LINE_START[:len(pending)]
  return MAYBE_NOISE_AFTER_S if maybe_reverb else PARTIAL_LINE_AFTER_S


def _write(fd: int, data: bytes) -> None:
  with contextlib.suppress(OSError):  # the real stderr is gone (a closed pipe): nothing to tell anyone
    while data:
      data = data[os.write(fd, data):]
