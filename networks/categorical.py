"""Categorical (two-hot) value representation and the value transforms it uses.

A value v is represented on a fixed support z_1 < ... < z_K (evenly spaced in
[value_min, value_max], in the *transformed* space) by the distribution that
puts mass on the two bins around h(v), so that its mean is exactly h(v)
(Schrittwieser et al. 2020, MuZero, appendix F; Farebrother et al. 2024,
"Stop Regressing"). The scalar back is h^-1(sum_k p_k z_k).

The signed hyperbolic transform h(x) = sign(x)(sqrt(|x|+1)-1) + eps*x and its
exact inverse are from Pohlen et al. 2018 ("Observe and Look Further", prop. A.2).
"""

from __future__ import annotations

from typing import Callable

import chex
import jax.numpy as jnp
import rlax

from networks.options import VALUE_TRANSFORMS  # noqa: F401


def value_transform_pair(name: str, eps: float = 1e-3) -> tuple[Callable, Callable]:
  """Returns (h, h_inverse) for a transform named in `VALUE_TRANSFORMS`."""
  if name == "identity":
    return (lambda x: x), (lambda x: x)
  if name == "signed_hyperbolic":
    return (lambda x: rlax.signed_hyperbolic(x, eps)), (lambda x: rlax.signed_parabolic(x, eps))
  raise ValueError(f"value_transform={name!r} is not one of {VALUE_TRANSFORMS}")


def support(num_bins: int, value_min: float, value_max: float) -> jnp.ndarray:
  """The bin centres, float32[num_bins], evenly spaced from value_min to value_max."""
  return jnp.linspace(value_min, value_max, num_bins, dtype=jnp.float32)


def two_hot(x: chex.Array, value_min: float, value_max: float, num_bins: int) -> jnp.ndarray:
  """Projects scalars x[...] onto the support: float32[..., num_bins], mean exactly x.

  Values outside [value_min, value_max] are clipped to the end bins.
  """
  x = jnp.clip(jnp.asarray(x, jnp.float32), value_min, value_max)
  position = (x - value_min) / (value_max - value_min) * (num_bins - 1)
  lower = jnp.clip(jnp.floor(position), 0, num_bins - 2)
  upper_weight = position - lower  # in [0, 1]; 1 only at value_max
  bins = jnp.arange(num_bins, dtype=jnp.float32)
  lower_hot = (bins == lower[..., None]).astype(jnp.float32)
  upper_hot = (bins == lower[..., None] + 1).astype(jnp.float32)
  return lower_hot * (1.0 - upper_weight)[..., None] + upper_hot * upper_weight[..., None]


def expected_value(probs: chex.Array, value_min: float, value_max: float) -> jnp.ndarray:
  """The mean of a distribution probs[..., num_bins] over the support (in transformed space)."""
  return jnp.sum(probs * support(probs.shape[-1], value_min, value_max), axis=-1)
