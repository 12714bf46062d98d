"""Spectral normalisation (Miyato et al. 2018) of a dense or conv layer, as Gogianu et al. 2021 use it in DQN.

The layer's kernel W, read as a matrix [inputs, outputs] (a conv kernel [kh, kw, in, out] as
[kh * kw * in, out]), is divided by an estimate of its largest singular value sigma. The estimate comes
from a power-iteration vector u (float32[outputs]) kept in the variable collection `"spectral_norm"`
beside the layer's `params` (same path: `spectral_norm/torso/dense0/u`):

  v = normalise(W u),  u' = normalise(W^T v),  sigma = v^T W u'

with u' and v held constant for the gradient, which flows through W in sigma (Miyato et al.). The forward
pass reads u and never writes it; the learner advances it by one power step after every update
(`power_step_all`), so the layers keep their parameter names and every apply stays pure.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

SPECTRAL_NORM = "spectral_norm"
_EPS = 1e-12


def _normalise(x: jax.Array) -> jax.Array:
  return x / (jnp.linalg.norm(x) + _EPS)


def power_step(matrix: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One power iteration on matrix [inputs, outputs] from u [outputs]: (u', v), both without gradient."""
  matrix, u = jax.lax.stop_gradient(matrix), jax.lax.stop_gradient(u)
  v = _normalise(matrix @ u)
  return _normalise(matrix.T @ v), v


def sigma(kernel: jax.Array, u: jax.Array) -> jax.Array:
  """The estimate v^T W u' of the largest singular value of the kernel, differentiable in the kernel."""
  matrix = kernel.reshape(-1, kernel.shape[-1])
  u_next, v = power_step(matrix, u)
  return v @ matrix @ u_next


def power_step_all(variables: dict) -> dict:
  """The variables with every spectral-norm vector advanced by one power step on its current kernel."""
  if SPECTRAL_NORM not in variables:
    return variables
  params = traverse_util.flatten_dict(variables["params"])
  vectors = traverse_util.flatten_dict(variables[SPECTRAL_NORM])
  advanced = {}
  for path, u in vectors.items():
    kernel = params[path[:-1] + ("kernel",)]
    advanced[path] = power_step(kernel.reshape(-1, kernel.shape[-1]), u)[0]
  return {**variables, SPECTRAL_NORM: traverse_util.unflatten_dict(advanced)}


def _vector(module: nn.Module, outputs: int):
  init = lambda: _normalise(jax.random.normal(module.make_rng("params"), (outputs,)))
  return module.variable(SPECTRAL_NORM, "u", init)


class SNDense(nn.Module):
  """nn.Dense with a spectrally normalised kernel (same parameter names: kernel, bias)."""

  features: int
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    u = _vector(self, self.features)
    return x @ (kernel / sigma(kernel, u.value)) + bias


class SNConv(nn.Module):
  """nn.Conv (NHWC inputs, HWIO kernel) with a spectrally normalised kernel."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "VALID"
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape)
    bias = self.param("bias", self.bias_init, (self.features,))
    u = _vector(self, self.features)
    y = jax.lax.conv_general_dilated(x, kernel / sigma(kernel, u.value), tuple(self.strides), self.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias
