"""What code a process runs: the project's git commit (and whether the tree had changes), Python and the pinned
packages' versions. The learner writes it once per life into `metrics/lives.jsonl` (common.run_dir.LIVES_STREAM),
so a run resumed across commits says so, and compare.py names the commits behind every report.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Optional

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jax", "jaxlib", "flax", "optax", "rlax", "ale-py", "dm-reverb", "tensorflow-cpu", "tensorflow", "numpy")
GIT_TIMEOUT_S = 10.0


def _git(*args: str) -> Optional[str]:
  """git's output in the project's directory, or None where there is no git or no repository."""
  try:
    done = subprocess.run(["git", "-C", PROJECT_ROOT, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                          check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict:
  """{"commit": the checkout's HEAD or None (not a git checkout of its own: an install into site-packages that
  lies inside some other repository is not one), "dirty": whether tracked files differ from it (None without a
  commit)}."""
  top = _git("rev-parse", "--show-toplevel")
  commit = _git("rev-parse", "HEAD")
  if top is None or commit is None or os.path.realpath(top) != os.path.realpath(PROJECT_ROOT):
    return {"commit": None, "dirty": None}
  changes = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def package_versions() -> dict[str, Optional[str]]:
  """Each of PACKAGES -> its installed version, or None (TensorFlow is tensorflow-cpu here, tensorflow on a GPU host)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def provenance() -> dict:
  """The row's fields: code_version(), the host, Python and package_versions()."""
  return {**code_version(), "host": platform.node(), "python": platform.python_version(),
          "packages": package_versions()}
