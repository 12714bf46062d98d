"""Config validation shared by every frozen config dataclass.

Each config calls these from `__post_init__`, so a bad value fails at
construction with one message that names the field and what it allows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable


class ConfigError(Exception):
  """A config value a user set is out of range; the message names the field.

  Deliberately not a ValueError: tyro turns ValueErrors raised while it builds a
  config into its own error box, while train.py prints this one-line message itself.
  """


def check_in(field: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(repr, allowed))}")


def check_range(
    field: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
  """Checks low <= value <= high (or strict, per side); either bound may be None."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"{field}={value!r} must be a number")
  check_finite(field, value)
  too_low = low is not None and (value < low if low_inclusive else value <= low)
  too_high = high is not None and (value > high if high_inclusive else value >= high)
  if too_low or too_high:
    left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
    right = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
    raise ConfigError(f"{field}={value!r} is outside the allowed range {left}, {right}")


def check_int(field: str, value: int, *, low: int | None = None, high: int | None = None) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"{field}={value!r} must be an integer")
  check_range(field, value, low=low, high=high)


def is_finite_number(value: Any) -> bool:
  """A real number (not a bool) that is neither NaN nor +-inf: what a metric row or a report may hold."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite(field: str, value: float) -> None:
  """NaN and +-inf are never a setting: a NaN passes every comparison, so range checks alone let it through."""
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f"{field}={value!r} must be a finite number")


def check_finite_fields(config: Any) -> None:
  """Every float field of the dataclass `config` (and every float in a tuple field) is finite.

  Each config calls this first in `__post_init__`, so a non-finite value is named even in a field with no
  range check of its own. Nested config dataclasses check themselves when they are built.
  """
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, float):
        check_finite(field.name, item)
