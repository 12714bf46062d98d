"""Atari environments: protocol config, game-name checks, batched `AtariEnv`."""

from envs.ale import all_games
from envs.atari import (
    PROTOCOLS,
    AtariEnv,
    AtariProtocol,
    EnvStep,
    Episode,
    UnknownGameError,
    check_game,
    parse_game,
)

__all__ = [
    "PROTOCOLS",
    "AtariEnv",
    "AtariProtocol",
    "EnvStep",
    "Episode",
    "UnknownGameError",
    "all_games",
    "check_game",
    "parse_game",
]
