"""Random and human reference scores (Atari 57) and the Atari 100k game list, shipped in envs/reference/.

Sources are in envs/reference/README.md (DQN Zoo's `atari_data.py`; rliable's game list).
Human-normalised score: (score - random) / (human - random) (Mnih et al. 2015).
"""

from __future__ import annotations

import csv
import functools
import os

from common.validation import ConfigError

_REFERENCE_DIR = os.path.join(os.path.dirname(__file__), "reference")


@functools.lru_cache(maxsize=None)
def reference_scores() -> dict[str, tuple[float, float]]:
  """game -> (random score, human score)."""
  with open(os.path.join(_REFERENCE_DIR, "atari_scores.csv"), encoding="utf-8") as handle:
    return {row["game"]: (float(row["random"]), float(row["human"])) for row in csv.DictReader(handle)}


@functools.lru_cache(maxsize=None)
def atari100k_games() -> tuple[str, ...]:
  with open(os.path.join(_REFERENCE_DIR, "atari100k_games.txt"), encoding="utf-8") as handle:
    return tuple(line.strip() for line in handle if line.strip())


def human_normalized_score(game: str, score: float) -> float:
  """(score - random) / (human - random); raises ConfigError for a game without reference scores."""
  if game not in reference_scores():
    raise ConfigError(f"game={game!r} has no random/human reference score (the table covers the Atari 57 games)")
  random_score, human_score = reference_scores()[game]
  return (score - random_score) / (human_score - random_score)
