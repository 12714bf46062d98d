"""Files written whole or not at all: a reader (or a resume after SIGKILL) sees the old content or the new, never a
torn one. The data goes to a temporary file beside the target (same file system), which then replaces it."""

from __future__ import annotations

import json
import os
from typing import Any


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
