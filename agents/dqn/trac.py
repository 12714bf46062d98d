"""TRAC (Muppidi, Zhang & Wang 2024, "Fast TRAC: A Parameter-Free Optimizer for Lifelong Reinforcement Learning",
arXiv 2405.16642): the base optimizer's steps, scaled by a factor S that TRAC tunes online, from a reference point.

The parameters are theta = theta_ref + S * Delta, with theta_ref the initial parameters and Delta the sum of the base
optimizer's steps. S is the sum, over discount factors beta_i, of erfi-shaped bets on the correlation between the
gradients and Delta. One update, as the authors' code computes it (ComputationalRobotics/TRAC, copied verbatim in
Plasticine at aa00b4b as plasticine/trac.py; line numbers below are that file's), given the gradient g at theta:

  u = base.update(g)                                  the base step (:184, :200)
  Delta_prev = (theta - theta_ref) / (S_prev + eps)   Delta recovered from the parameters (:198)
  h = <Delta_prev, g>                                  over all parameters (:202-215)
  Delta = Delta_prev + u                               (:217)
  v_i <- beta_i^2 v_i + h^2;  sigma_i <- beta_i sigma_i - h                              (:236-238)
  s_i = s_prior / erfi(1/sqrt(2)) * erfi(sigma_i / (sqrt(2 v_i) + eps));  S = sum_i s_i (:239-243, :253)
  theta <- theta_ref + max(S, 0) * Delta                                                 (:255-256)

with betas 0.9 ... 0.999999, s_prior = eps = 1e-8, sigma_i starting at 1e-8, v_i and s_i at 0 (:116-133, :273-280).
The one departure: erfi's argument is clipped to +-ERFI_ARGUMENT_LIMIT, where erfi in float32 would overflow (torch's
computes inf there and the parameters become inf); S then grows by at most a factor of about 1e34 per bet, not to inf.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
S_PRIOR = 1e-8
EPS = 1e-8
ERFI_ARGUMENT_LIMIT = 9.0  # erfi(9) ~ 1e34 < float32's 3e38; erfi(9.5) overflows
_ERFI_TERMS = 300  # enough for |x| <= 9: the terms x^(2n+1) / (n! (2n+1)) peak near n = x^2 and are < 1e-8 of the sum by n ~ 250


def erfi(x: chex.Array) -> jax.Array:
  """The imaginary error function, erfi(x) = -i erf(ix) = 2/sqrt(pi) sum_n x^(2n+1) / (n! (2n+1)), by its series (JAX
  has no erfi): every term has x's sign, so there is no cancellation; float32 is good to ~1e-6 relative for
  |x| <= ERFI_ARGUMENT_LIMIT."""
  x = jnp.asarray(x, jnp.float32)
  x2 = x * x

  def body(n, carry):
    total, power = carry  # power = x^(2n+1) / n!
    total = total + power / (2 * n + 1)
    return total, power * x2 / (n + 1)

  total, _ = jax.lax.fori_loop(0, _ERFI_TERMS, body, (jnp.zeros_like(x), x))
  return 2.0 / jnp.sqrt(jnp.pi) * total


_ERFI_HALF = 0.9534382692512609  # erfi(1/sqrt(2))


class TracState(NamedTuple):
  """The reference point, the base optimizer's state, and the bets' accumulators (one per beta)."""
  ref_params: chex.ArrayTree
  base: optax.OptState
  v: jax.Array  # float32[len(BETAS)]
  sigma: jax.Array  # float32[len(BETAS)]
  s: jax.Array  # float32[len(BETAS)]: S = sum(s)


def trac(base: optax.GradientTransformation) -> optax.GradientTransformation:
  """`base`'s steps scaled by TRAC's online factor (the module docstring); needs the parameters at every update."""
  betas = jnp.asarray(BETAS, jnp.float32)

  def init(params):
    n = len(BETAS)
    return TracState(jax.tree.map(jnp.asarray, params), base.init(params), jnp.zeros(n, jnp.float32),
                     jnp.full(n, 1e-8, jnp.float32), jnp.zeros(n, jnp.float32))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("trac needs the parameters: optimizer.update(grads, state, params)")
    steps, base_state = base.update(grads, state.base, params)
    s_before = jnp.sum(state.s)
    delta_before = jax.tree.map(lambda p, r: (p - r) / (s_before + EPS), params, state.ref_params)
    h = sum(jnp.vdot(d, g) for d, g in zip(jax.tree.leaves(delta_before), jax.tree.leaves(grads)))
    delta = jax.tree.map(jnp.add, delta_before, steps)
    v = betas ** 2 * state.v + h ** 2
    sigma = betas * state.sigma - h
    argument = jnp.clip(sigma / (jnp.sqrt(2.0 * v) + EPS), -ERFI_ARGUMENT_LIMIT, ERFI_ARGUMENT_LIMIT)
    s = S_PRIOR / _ERFI_HALF * erfi(argument)
    scale = jnp.maximum(jnp.sum(s), 0.0)
    new_params = jax.tree.map(lambda r, d: r + scale * d, state.ref_params, delta)
    updates = jax.tree.map(jnp.subtract, new_params, params)
    return updates, TracState(state.ref_params, base_state, v, sigma, s)

  return optax.GradientTransformation(init, update)
