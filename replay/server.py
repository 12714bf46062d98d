"""The Reverb server: tables `replay` (transitions), `params` (latest weights), `job` and `events`.

`job` holds the job's configuration for actors that join it; `events` is a queue
of actor reports (episodes, env steps) to the learner (see `replay/messages.py`).

Embedded in the learner process by default (`ReplayServer(...)`); also standalone:

  python -m replay.server --port 8000 [--checkpoint-dir runs/x/replay] [--replay.max-size ...]

Reverb 0.14 always listens on every interface ("[::]:PORT", fixed inside its
C++ server; there is no bind-address option), so `--address` only sets the
address this process prints for clients. Keep the port behind a firewall on
shared networks.

With a checkpoint directory, the server restores the newest checkpoint found
there when it starts, and `ReplayServer.checkpoint()` writes a new one: items,
priorities, rate-limiter counts and the `params` table. Reverb marks a finished
checkpoint with a DONE file, loads only finished ones, and deletes the previous
checkpoint once a new one is complete, so one (the newest) is kept.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
import threading

import reverb

from agents.dqn import transition
from common.validation import ConfigError
from replay.config import ReplayConfig

REPLAY_TABLE = "replay"
PARAMS_TABLE = "params"
JOB_TABLE = "job"
EVENTS_TABLE = "events"
EVENTS_MAX_SIZE = 100_000


class PortInUseError(ConfigError):
  """The requested server port is taken."""


def make_tables(config: ReplayConfig, obs_shape: tuple[int, int, int]) -> list[reverb.Table]:
  if config.prioritized:
    sampler = reverb.selectors.Prioritized(priority_exponent=config.priority_exponent)
  else:
    sampler = reverb.selectors.Uniform()
  replay = reverb.Table(
      name=REPLAY_TABLE,
      sampler=sampler,
      remover=reverb.selectors.Fifo(),
      max_size=config.max_size,
      rate_limiter=reverb.rate_limiters.SampleToInsertRatio(
          samples_per_insert=config.samples_per_insert,
          min_size_to_sample=config.min_replay_size,
          error_buffer=config.error_buffer,
      ),
      signature=transition.reverb_signature(obs_shape),
  )
  events = reverb.Table.queue(name=EVENTS_TABLE, max_size=EVENTS_MAX_SIZE)
  return [replay, _latest_only(PARAMS_TABLE), _latest_only(JOB_TABLE), events]


def _latest_only(name: str) -> reverb.Table:
  """A table that holds one item, the latest inserted (the weights, the job description); reads wait for it."""
  return reverb.Table(name=name, sampler=reverb.selectors.Fifo(), remover=reverb.selectors.Fifo(), max_size=1,
                      rate_limiter=reverb.rate_limiters.MinSize(1))


def check_port_free(port: int) -> None:
  """Reverb aborts the whole process on a taken port; fail first, with a message."""
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
          probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
    except OSError as error:
      if family == socket.AF_INET6 and error.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):  # no IPv6 here
        continue
      raise PortInUseError(f"port {port} is in use (or not allowed): {error.strerror}") from None


def reachable_addresses() -> list[str]:
  """This host's own addresses (IPv4 and IPv6, loopback included): where a port bound on every interface answers."""
  addresses = []
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    for _, name in socket.if_nameindex():
      try:
        packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
        addresses.append(socket.inet_ntoa(packed[20:24]))
      except OSError:  # no IPv4 address on it
        pass
  try:
    with open("/proc/net/if_inet6", encoding="ascii") as handle:
      for line in handle:
        raw = line.split()[0]
        addresses.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw)))
  except OSError:
    pass
  return addresses


class ReplayServer:
  """A Reverb server with the `replay` and `params` tables, optionally checkpointed."""

  def __init__(
      self,
      config: ReplayConfig,
      obs_shape: tuple[int, int, int],
      *,
      port: int | None = None,
      checkpoint_dir: str | None = None,
      restore_from: str | None = None,
  ):
    """`checkpoint_dir`: where `checkpoint()` writes (Reverb loads the newest complete checkpoint there at start);
    `restore_from`: one checkpoint directory to load instead, used only when `checkpoint_dir` holds none. A
    damaged checkpoint raises RuntimeError (Reverb's "corrupted record"); a missing one loads nothing, so callers
    check that it is there and whole first (common.run_dir.RunCheckpoints)."""
    if port is not None:
      check_port_free(port)
    checkpointer = None
    if checkpoint_dir is not None:
      os.makedirs(checkpoint_dir, exist_ok=True)
      checkpointer = reverb.checkpointers.DefaultCheckpointer(path=checkpoint_dir, fallback_checkpoint_path=restore_from)
    elif restore_from is not None:
      raise ValueError("restore_from needs a checkpoint_dir")
    self.config = config
    self.checkpoint_dir = checkpoint_dir
    self._server = reverb.Server(tables=make_tables(config, obs_shape), port=port, checkpointer=checkpointer)
    self.port = self._server.port
    self._client = reverb.Client(self.address)  # one gRPC channel, shared (reverb.Client is thread-safe)

  @property
  def address(self) -> str:
    return f"localhost:{self.port}"

  def client(self) -> reverb.Client:
    return self._client

  def checkpoint(self) -> str:
    """Writes a checkpoint of both tables into `checkpoint_dir`; returns its path."""
    if self.checkpoint_dir is None:
      raise ValueError("this server was started without a checkpoint_dir")
    return self.client().checkpoint()

  def size(self, table: str = REPLAY_TABLE) -> int:
    return self.client().server_info()[table].current_size

  def stop(self) -> None:
    """Stops the server; blocked inserts and samples on it fail instead of hanging."""
    self._server.stop()

  def wait(self) -> None:
    self._server.wait()

  def __enter__(self) -> "ReplayServer":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


@dataclasses.dataclass(frozen=True)
class ServerArgs:
  """Start a standalone replay server."""

  port: int = 8000
  """Port to serve on."""
  address: str = "localhost"
  """The address printed for clients (Reverb itself listens on every interface)."""
  obs_shape: tuple[int, int, int] = (84, 84, 4)
  """Observation shape (height, width, stacked frames) of the transitions."""
  checkpoint_dir: str | None = None
  """Restore from and checkpoint into this directory."""
  replay: ReplayConfig = ReplayConfig()


def main(argv: list[str] | None = None) -> int:
  import tyro  # only `python -m replay.server` parses flags; the learner imports this module without it

  try:
    args = tyro.cli(ServerArgs, args=argv)
    server = ReplayServer(args.replay, args.obs_shape, port=args.port, checkpoint_dir=args.checkpoint_dir)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"replay server listening at {args.address}:{server.port}", flush=True)
  stop = threading.Event()
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
  stop.wait()
  if args.checkpoint_dir:
    print(f"checkpoint written to {server.checkpoint()}", flush=True)
  server.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
