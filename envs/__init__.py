"""Atari environments: protocol config, game-name checks, batched `AtariEnv`."""

from envs.atari import (
    PROTOCOLS,
    AtariEnv,
    AtariProtocol,
    EnvStep,
    Episode,
    UnknownGameError,
    all_games,
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
