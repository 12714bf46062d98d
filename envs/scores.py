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


@functools.lru_cache(maxsize=None)
def published_scores(agent: str = "DrQ(eps)") -> dict[str, dict]:
  """game -> {"score", "runs", "spread", "spread_kind", "source"} of a published Atari 100k agent
  (envs/reference/published_atari100k.csv; each row names its source)."""
  path = os.path.join(_REFERENCE_DIR, "published_atari100k.csv")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as handle:
    rows = [row for row in csv.DictReader(handle) if row["agent"] == agent]
  return {row["game"]: {**{k: row[k] for k in ("spread_kind", "source")}, "score": float(row["score"]),
                        "runs": int(row["runs"]) if row["runs"] else None,
                        "spread": float(row["spread"]) if row["spread"] else None} for row in rows}


def human_normalized_score(game: str, score: float) -> float:
  """(score - random) / (human - random); raises ConfigError for a game without reference scores."""
  if game not in reference_scores():
    raise ConfigError(f"game={game!r} has no random/human reference score (the table covers the Atari 57 games)")
  random_score, human_score = reference_scores()[game]
  return (score - random_score) / (human_score - random_score)
