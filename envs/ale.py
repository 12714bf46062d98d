"""The ALE itself, below the environments: the ROMs ale-py ships, a quiet `ALEInterface`, and a ROM's modes and
difficulties. `envs/atari.py` (the vector environment and game-name checks) and `envs/mode_env.py` (the Python game
loop for modes and difficulties) both build on these; neither imports the other's helpers.
"""

from __future__ import annotations

import functools
from typing import Optional

NATIVE_HEIGHT, NATIVE_WIDTH = 210, 160  # the Atari 2600 screen as ALE renders it


@functools.cache
def all_games() -> tuple[str, ...]:
  """Every ROM id that ale-py ships (`pong`, `space_invaders`, ...)."""
  from ale_py import roms  # the emulator loads on first use: configs and flags are checked without it

  return tuple(sorted(roms.get_all_rom_ids()))


def quiet_ale_interface():
  """A bare `ale_py.ALEInterface`, its log set to errors only (no banner at each ROM load)."""
  import ale_py  # the emulator loads on first use: configs and flags are checked without it

  ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
  return ale_py.ALEInterface()


@functools.cache
def game_variants(rom: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The ALE modes and difficulties that ROM `rom` offers."""
  from ale_py import roms  # the emulator loads on first use: configs and flags are checked without it

  ale = quiet_ale_interface()
  ale.loadROM(roms.get_rom_path(rom))
  return tuple(int(m) for m in ale.getAvailableModes()), tuple(int(d) for d in ale.getAvailableDifficulties())


def set_game_variant(ale, mode: Optional[int], difficulty: Optional[int]) -> None:
  """Sets a loaded ROM's mode and difficulty where given; None keeps the ROM's default."""
  if mode is not None:
    ale.setMode(mode)
  if difficulty is not None:
    ale.setDifficulty(difficulty)
