"""What a process sets before JAX, TensorFlow or Reverb start: `setup_process(kind)`, called first by every entry
point (docs/design.md, "Processes"), so that no other module spells an environment variable or an XLA flag.

These libraries read their environment once, when they start; set later, it does nothing. So each entry point
calls this before its first import of any of them, and the modules below it set nothing themselves.

Kinds:

- "tool": a command-line tool (train.py, sweep.py, compare.py, bench/*.py, the replay server as a child of
  bench/replay.py): TensorFlow's C++ log (Reverb's TensorFlow) keeps errors only.
- "eval": eval.py: also JAX on the CPU unless JAX_PLATFORMS says otherwise, and numpy's BLAS on one thread (as
  an actor's, below). Evaluation is a few small batched forward passes per step, and a checkpoint trained on a GPU
  must load on a machine without one.
- "actor": an actor or the evaluator (training/actor.py): also JAX on the CPU only, and XLA's CPU backend and
  numpy's BLAS (the Python game loop's resize, envs/mode_env.py) on one thread: the actors share the host's cores
  with each other and the learner (a BLAS pool of 2 threads made that resize 6x slower on 2 busy cores: an
  atari100k game stepped 149 times a second instead of 547).
- "probe": the probe worker (training/probe_worker.py) and the offline probe CLI (`python -m plasticity`): XLA's
  CPU backend on one thread for every probe, on `device`; no preallocation of GPU memory; beside a learner
  (`background`), a lower priority.

GPU memory (`gpu_memory_env`, `set_gpu_memory`): the learner takes RunConfig.gpu_memory_fraction of the GPU when
it starts (train.py sets it in its own environment before JAX starts its backend); the probe worker takes at most
probe_gpu_memory_fraction, as it needs it (train.py puts it in the worker's environment); sweep.py divides both
among the runs it runs at once. JAX's own default would be 75% for every process, preallocated.

The filter on the libraries' log lines is a stream, not a setting: train.py runs in `common.log_filter`'s
`filtered_stderr()`, and its children inherit it.
"""

from __future__ import annotations

import os
import sys

KINDS = ("tool", "eval", "actor", "probe")
TF_CPP_MIN_LOG_LEVEL = "2"  # errors only
OPENBLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"
SINGLE_THREADED_XLA_CPU = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def setup_process(kind: str, *, device: str = "auto", background: bool = False) -> None:
  """Sets this process's environment for `kind` (see the module docstring); `device` and `background` are the
  probe worker's and the probe CLI's ("cpu" or "auto"; True beside a learner)."""
  if kind not in KINDS:
    raise ValueError(f"process kind {kind!r} is not one of {', '.join(KINDS)}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
  if kind == "eval":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault(OPENBLAS_THREADS_ENV, "1")
  elif kind == "actor":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault(OPENBLAS_THREADS_ENV, "1")  # read when numpy loads
    single_threaded_xla_cpu()
  elif kind == "probe":
    _setup_probe(device, background)


# jaxlib reads these when it starts its GPU backend, at a process's first computation (jaxlib/xla_client.py:
# generate_pjrt_gpu_plugin_options); XLA_CLIENT_MEM_FRACTION is the fraction's newer name, an error beside it.
MEM_FRACTION_ENV, NEW_MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION"
PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"


def gpu_memory_env(fraction: float, *, preallocate: bool) -> dict[str, str]:
  """The environment in which JAX takes at most `fraction` of the GPU's memory, all of it at its start or as
  needed."""
  return {MEM_FRACTION_ENV: f"{fraction:.4g}", PREALLOCATE_ENV: "true" if preallocate else "false"}


def set_gpu_memory(fraction: float, *, preallocate: bool) -> None:
  """gpu_memory_env in this process's environment; before its first JAX computation (jax may be imported)."""
  os.environ.pop(NEW_MEM_FRACTION_ENV, None)
  os.environ.update(gpu_memory_env(fraction, preallocate=preallocate))


def describe_gpu_memory(environ=os.environ) -> str:
  """What this process's JAX may take of a GPU, from its environment."""
  fraction = environ.get(MEM_FRACTION_ENV) or environ.get(NEW_MEM_FRACTION_ENV)
  preallocate = environ.get(PREALLOCATE_ENV, "true") not in ("false", "False", "0")
  share = f"{float(fraction):.0%}" if fraction else "75% (JAX's default)"
  return f"{share} of a GPU's memory, {'taken at the start' if preallocate else 'at most, taken as needed'}"


def single_threaded_xla_cpu(environ=os.environ) -> None:
  """XLA's CPU backend computes on one thread (other backends are unaffected); in `environ`, this process's by
  default, or a child's environment being built."""
  if SINGLE_THREADED_XLA_CPU not in environ.get("XLA_FLAGS", ""):
    environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + SINGLE_THREADED_XLA_CPU).strip()


def _setup_probe(device: str, background: bool) -> None:
  """One XLA thread for every probe, the worker's and the offline CLI's: the target-fitting probe's targets,
  sin(1e5 f(x)), turn the last-bit differences between single- and multi-threaded matrix products into different
  targets, and a checkpoint probed offline must give the worker's row (tests/test_plasticity_worker.py)."""
  if device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported (by a config module) but no backend started yet: still in time
      sys.modules["jax"].config.update("jax_platforms", "cpu")
  single_threaded_xla_cpu()
  # A GPU learner preallocates most of the memory; the probes take what they need from the rest.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if background:  # beside a learner: only what CPU the learner leaves
    os.nice(10)
