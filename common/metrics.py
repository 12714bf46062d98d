"""Metrics of a run: JSON Lines under `<run_dir>/metrics/` (the source of truth) and TensorBoard under `<run_dir>/tb/`.

One stream per file (`train`, `episodes`, `eval`, `plasticity`, ...). Every row
is flushed as it is written, so a run that is killed loses at most the row in
progress, and `read_rows` skips such a torn last line. Numbers are written as
plain JSON numbers (numpy and JAX scalars included), so
`compare.py` and any other reader need nothing but `json`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional

import numpy as np

from common.files import naming_the_path
from common.run_dir import RunDir
from common.validation import is_finite_number


def _plain(value: Any) -> Any:
  """numpy / JAX scalars and 0-d arrays -> Python numbers; other values unchanged."""
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  array = np.asarray(value)
  if array.ndim == 0:
    return array.item()
  return array.tolist()


class MetricsLog:
  """Appends rows to `metrics/<stream>.jsonl` and their scalars to TensorBoard (`<stream>/<key>`)."""

  def __init__(self, run_dir: str, *, tensorboard: bool = True):
    self._run = RunDir(run_dir)
    self.metrics_dir = self._run.metrics_dir
    os.makedirs(self.metrics_dir, exist_ok=True)
    self._files: dict[str, Any] = {}
    self._tensorboard = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # only for a writer with TensorBoard: readers (read_rows) skip it

      self._tensorboard = SummaryWriter(logdir=self._run.tensorboard_dir, flush_secs=10)

  def path(self, stream: str) -> str:
    return self._run.stream_path(stream)

  def write(self, stream: str, row: dict, *, step_key: str = "env_steps") -> None:
    """Appends `row` to the stream; its numeric entries also go to TensorBoard at step `row[step_key]`."""
    row = {key: _plain(value) for key, value in row.items()}
    if stream not in self._files:
      self._files[stream] = open(self.path(stream), "a", encoding="utf-8")
    handle = self._files[stream]
    with naming_the_path(handle.name):
      handle.write(json.dumps(row) + "\n")
      handle.flush()
    if self._tensorboard is not None and step_key in row:
      for key, value in row.items():
        if key != step_key and is_finite_number(value):
          self._tensorboard.add_scalar(f"{stream}/{key}", value, global_step=int(row[step_key]))

  def close(self) -> None:
    for handle in self._files.values():
      handle.close()
    self._files.clear()
    if self._tensorboard is not None:
      self._tensorboard.close()

  def __enter__(self) -> "MetricsLog":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_rows(path: str, *, keep: Optional[Iterable[str]] = None) -> list[dict]:
  """Rows of a JSON Lines file; a torn last line (a run killed mid-write) is skipped, a missing file is empty."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as handle:
    lines = handle.read().split("\n")
  for index, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if index >= len(lines) - 2:  # only the last line may be incomplete
        continue
      raise ValueError(f"{path}:{index + 1} is not a JSON object: {line[:80]!r}") from None
    rows.append({k: row[k] for k in keep if k in row} if keep is not None else row)
  return rows
