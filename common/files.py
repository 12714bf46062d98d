"""Files written whole or not at all: a reader (or a resume after SIGKILL) sees the old content or the new, never a
torn one. The data goes to a temporary file beside the target (same file system), which then replaces it.

And what a write that found its device full says (`no_space_left`, `naming_the_path`), so that a run can end in
one line that names the path (common.run_dir: RunDir.disk_full_message).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Any, Iterator


def write_atomically(path: str, data: bytes | str) -> None:
  """Replaces `path` with `data` (text is written as UTF-8)."""
  if isinstance(data, str):
    data = data.encode("utf-8")
  tmp = f"{path}.tmp{os.getpid()}"  # one per process: two writers never share a temporary file
  try:
    with open(tmp, "wb") as handle:
      handle.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomically(path: str, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
  """Replaces `path` with the JSON of `value` and a final newline."""
  write_atomically(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def no_space_left(error: BaseException) -> bool:
  """Whether `error`, or an error it came from, is a write that found its device full: an OSError with ENOSPC
  (Python, Orbax), or an error of Reverb or TensorStore that carries the system's message."""
  for cause in _chain(error):
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(cause) or "ENOSPC" in str(cause):
      return True
  return False


@contextlib.contextmanager
def naming_the_path(path: str) -> Iterator[None]:
  """A write inside that finds the device full raises OSError(ENOSPC) naming `path`: Orbax's, Reverb's and an
  open file's own errors name no file."""
  try:
    yield
  except Exception as error:
    if no_space_left(error) and failed_path(error) is None:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from error
    raise


def failed_path(error: BaseException) -> str | None:
  """The file a failed write named, if an error in the chain says."""
  return next((cause.filename for cause in _chain(error) if isinstance(cause, OSError) and cause.filename), None)


def tree_bytes(path: str) -> int:
  """Bytes of the files under `path` (0 if there is nothing)."""
  total = 0
  for root, _, names in os.walk(path):
    for name in names:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass  # removed while walked
  return total


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__
