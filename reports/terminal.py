"""What compare.py prints: the comparison's main numbers as rich tables on the terminal (the files hold the rest)."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from reports.runs import departures_text, format_number


def _estimate(entry: Optional[dict]) -> str:
  """`0.333 [0.1, 0.5]`, or the point estimate alone when there is no interval."""
  if entry is None:
    return "-"
  if entry.get("ci") is None:
    return format_number(entry["value"])
  return f"{format_number(entry['value'])} [{format_number(entry['ci'][0])}, {format_number(entry['ci'][1])}]"


def variants_table(summary: dict) -> Table:
  """One row per variant: what it departs in, its runs, and its human-normalised aggregates with their intervals."""
  confidence = f"{100 * summary['settings']['confidence']:g}%"
  table = Table(title=f"Variants: human-normalised scores ({confidence} stratified bootstrap interval, where a game "
                      "has two runs or more)", title_justify="left")
  for column in ("variant", "departs in", "runs", "games", "mean", "median", "IQM"):
    table.add_column(column, justify="right" if column in ("runs", "mean", "median", "IQM") else "left")
  aggregate = summary["aggregate"]["variants"]
  for v in summary["variants"]:
    departs = departures_text(v["departures"], strip="agent.") or "(baseline)"
    runs = f"{v['runs']}" + (f" ({v['in_progress']} in progress)" if v["in_progress"] else "")
    row = aggregate.get(v["name"], {})
    table.add_row(v["name"], departs, runs, ", ".join(v["games"]), *(_estimate(row.get(m)) for m in ("mean", "median", "iqm")))
  return table


def games_table(summary: dict) -> Table:
  """Each game's mean final score per variant (game scores): a row per variant and a column per game, or the other
  way round when there are more games than variants, so that the longer list runs down the page."""
  names = [v["name"] for v in summary["variants"]]
  games = summary["games"]

  def cell(game: str, name: str) -> str:
    return _estimate(games[game][name]["mean"]) if name in games[game] else "-"

  table = Table(title="Final scores per game (mean over runs, game score)", title_justify="left")
  by_variant = len(names) > len(games)
  rows, columns = (names, list(games)) if by_variant else (list(games), names)
  table.add_column("variant" if by_variant else "game")
  for column in columns:
    table.add_column(column, justify="right")
  for row in rows:
    table.add_row(row, *(cell(column, row) if by_variant else cell(row, column) for column in columns))
  return table


def continual_table(summary: dict) -> Optional[Table]:
  """Each task's score after each switch, per variant (a column per phase, the game it played, and task scored);
  None without continual runs."""
  continual = summary.get("continual")
  if not continual:
    return None
  tasks = continual["tasks"]
  phases = sorted({row["phase"] for entry in continual["variants"].values() for row in entry["phases"]})
  played = {row["phase"]: row["played"] for entry in continual["variants"].values() for row in entry["phases"]}
  table = Table(title="Continual tasks: each task's score after each switch (" + " → ".join(
      continual["schedule"]["sequence"]) + ")", title_justify="left")
  table.add_column("variant")
  for phase in phases:
    for task in tasks:
      table.add_column(f"phase {phase} ({played[phase]})\n{task}", justify="right")
  for name, entry in continual["variants"].items():
    by_phase = {row["phase"]: row["scores"] for row in entry["phases"]}
    table.add_row(name, *(format_number(by_phase.get(p, {}).get(t)) for p in phases for t in tasks))
  return table


def print_tables(summary: dict, console: Optional[Console] = None) -> None:
  if console is None:
    console = Console()
    if not console.is_terminal:  # a pipe or a file: wide enough for a row per variant (a terminal gives its own)
      console.width = 160
  for table in (variants_table(summary), games_table(summary), continual_table(summary)):
    if table is not None:
      console.print(table)
