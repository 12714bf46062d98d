"""Probe settings: one frozen dataclass, validated at construction (no JAX import, so train.py can parse it cheaply).

The sizes that decide what a probe costs default to None, "sized for the device the probe worker
runs on", and `ProbeConfig.resolved(backend)` fills them in, in one place, from `GPU_SIZES` or
`CPU_SIZES`. A value the user sets (a flag, a preset, a config.json) is always kept as it is.

Why two sizes: a probe's cost is almost all target fitting, num_targets x probe_steps optimizer
steps on batches of target_batch_size, twice with fresh_reference. At the GPU sizes (Lyle et al.
2023's scale: 10 targets x 2,000 steps x 512 frames) that is 40,000 Nature-CNN steps on 512
frames: minutes on a GPU, an estimated 9 hours on one core of this project's 2-core CPU (0.1 s
per step at batch 64, so about 0.8 s at 512). At the CPU sizes (2 x 100 x 64) one probe of a
Nature-CNN checkpoint took 50 s of CPU time on one XLA thread here (AMD EPYC, measured with
the other probes included; 43 s of it target fitting), 1-2 minutes of wall time beside other
work. The CPU numbers are coarser and not comparable with GPU ones, which is why every
plasticity.jsonl row records the sizes it was probed with (`probe_sizes`, `probe_backend`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from common.validation import check_in, check_int, check_finite_fields

PROBE_DEVICES = ("auto", "cpu")

SIZED_FIELDS = ("num_targets", "probe_steps", "target_batch_size", "hessian_examples", "hessian_iterations",
                "grad_cov_examples")
"""The fields whose None means "sized for the device" (see `ProbeConfig.resolved`)."""
GPU_SIZES = {"num_targets": 10, "probe_steps": 2_000, "target_batch_size": 512, "hessian_examples": 256,
             "hessian_iterations": 20, "grad_cov_examples": 512}
"""Any accelerator: the scale of Lyle et al. 2023's probes (minutes per Nature-CNN checkpoint)."""
CPU_SIZES = {"num_targets": 2, "probe_steps": 100, "target_batch_size": 64, "hessian_examples": 64,
             "hessian_iterations": 10, "grad_cov_examples": 64}
"""A CPU: 1/800 of the GPU target-fitting work, so a Nature-CNN checkpoint takes about a minute, not hours."""


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """What the plasticity probes measure on each probed checkpoint, and how much work they spend on it.

  The size fields left at None are filled in for the probe worker's device by `resolved`:
  GPU_SIZES on a GPU, CPU_SIZES on a CPU (the values are given in each field's line).
  """

  inputs: int = 512
  """Replay transitions saved with every checkpoint as the probes' inputs (the learner's most recent batches)."""
  num_targets: Optional[int] = None
  """Target-fitting probe: random target functions fitted per checkpoint (Lyle et al. 2023). None: 10 on a GPU, 2 on a CPU."""
  probe_steps: Optional[int] = None
  """Target-fitting probe: optimizer steps per target function. None: 2,000 on a GPU, 100 on a CPU."""
  target_batch_size: Optional[int] = None
  """Target-fitting probe: inputs per optimizer step (all inputs when there are fewer). None: 512 on a GPU, 64 on a CPU."""
  fresh_reference: bool = True
  """Also run the target-fitting probe from a fresh initialisation of the same network, for reference."""
  hessian_examples: Optional[int] = None
  """Transitions in the TD-loss batch whose Hessian's top eigenvalue is estimated. None: 256 on a GPU, 64 on a CPU."""
  hessian_iterations: Optional[int] = None
  """Lanczos steps (one Hessian-vector product each) for the top eigenvalue. None: 20 on a GPU, 10 on a CPU."""
  spectral_density: bool = False
  """Also estimate the Hessian's spectral density by stochastic Lanczos quadrature (slower)."""
  grad_cov_examples: Optional[int] = None
  """Per-example TD-loss gradients in the gradient covariance (Lyle et al. 2023 eq. 3). None: 512 on a GPU, 64 on a CPU."""
  heatmaps: bool = True
  """Save a gradient-covariance heatmap PNG per probed checkpoint under plasticity/."""
  device: str = "auto"
  """auto: the probe worker uses the GPU when JAX sees one (memory grown on demand, not preallocated), else the CPU."""
  seed: int = 0
  """Seeds the probes' randomness together with the checkpoint step, so online and offline probes agree."""

  def __post_init__(self):
    check_finite_fields(self)
    check_int("inputs", self.inputs, low=1)
    for name in SIZED_FIELDS:
      if getattr(self, name) is not None:
        check_int(name, getattr(self, name), low=1)
    check_int("seed", self.seed, low=0)
    check_in("device", self.device, PROBE_DEVICES)

  def resolved(self, backend: str) -> "ProbeConfig":
    """This config with every size left at None filled in for `backend` (jax.default_backend() of the probes:
    "cpu" takes CPU_SIZES, anything else GPU_SIZES, and device="cpu" always CPU_SIZES); set sizes are kept."""
    sizes = CPU_SIZES if backend == "cpu" or self.device == "cpu" else GPU_SIZES
    return dataclasses.replace(self, **{name: sizes[name] for name in SIZED_FIELDS if getattr(self, name) is None})

  def sizes(self) -> dict[str, Optional[int]]:
    """The size fields by name (None where not resolved yet): what a probed row records as `probe_sizes`."""
    return {name: getattr(self, name) for name in SIZED_FIELDS}
