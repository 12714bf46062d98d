"""Probe settings: one frozen dataclass, validated at construction (no JAX import, so train.py can parse it cheaply)."""

from __future__ import annotations

import dataclasses

from common.validation import check_in, check_int

PROBE_DEVICES = ("auto", "cpu")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """What the plasticity probes measure on each probed checkpoint, and how much work they spend on it."""

  inputs: int = 512
  """Replay transitions saved with every checkpoint as the probes' inputs (the learner's most recent batches)."""
  num_targets: int = 10
  """Target-fitting probe: random target functions fitted per checkpoint (Lyle et al. 2023)."""
  probe_steps: int = 2_000
  """Target-fitting probe: optimizer steps per target function."""
  target_batch_size: int = 512
  """Target-fitting probe: inputs per optimizer step (all inputs when there are fewer)."""
  fresh_reference: bool = True
  """Also run the target-fitting probe from a fresh initialisation of the same network, for reference."""
  hessian_examples: int = 256
  """Transitions in the TD-loss batch whose Hessian's top eigenvalue is estimated."""
  hessian_iterations: int = 20
  """Power-iteration steps (Hessian-vector products) for the top eigenvalue."""
  spectral_density: bool = False
  """Also estimate the Hessian's spectral density by stochastic Lanczos quadrature (slower)."""
  grad_cov_examples: int = 512
  """Per-example TD-loss gradients in the gradient covariance (Lyle et al. 2023 eq. 3)."""
  heatmaps: bool = True
  """Save a gradient-covariance heatmap PNG per probed checkpoint under plasticity/."""
  device: str = "auto"
  """auto: the probe worker uses the GPU when JAX sees one (memory grown on demand, not preallocated), else the CPU."""
  seed: int = 0
  """Seeds the probes' randomness together with the checkpoint step, so online and offline probes agree."""

  def __post_init__(self):
    for name in ("inputs", "num_targets", "target_batch_size", "hessian_examples", "hessian_iterations",
                 "grad_cov_examples"):
      check_int(name, getattr(self, name), low=1)
    check_int("probe_steps", self.probe_steps, low=1)
    check_int("seed", self.seed, low=0)
    check_in("device", self.device, PROBE_DEVICES)
