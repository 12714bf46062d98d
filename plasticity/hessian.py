"""Curvature of the loss: the top Hessian eigenvalue (sharpness) and the Hessian's spectral density.

Both run the Lanczos algorithm on Hessian-vector products, never forming the
Hessian: Hv = d/de grad L(theta + e v) at e = 0, forward-over-reverse
(`jax.jvp` of `jax.grad`), on the parameters flattened to one vector [P] (any
pytree of float arrays). Lanczos keeps every basis vector and fully
re-orthogonalises against them (twice per step), so it needs (m + 1) x P floats
for m iterations (21 x 1.7M x 4 bytes = 143 MB for a Nature CNN at m = 20) and
shows no spurious copies of converged eigenvalues.

Matrix products run at full float32 precision (`jax.default_matmul_precision("highest")`):
TF32 on a GPU would add ~1e-3 relative noise to every Hessian-vector product.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

_HIGHEST = jax.lax.Precision.HIGHEST
# beta_j below this share of the largest |Ritz value| means the Krylov space is invariant: T's eigenvalues are exact.
_BREAKDOWN_RTOL = 1e-6


class LanczosResult(NamedTuple):
  alphas: np.ndarray  # float64[k], diagonal of the tridiagonal T_k
  betas: np.ndarray  # float64[k], beta_j = ||r_j||; betas[:-1] is T_k's off-diagonal, betas[-1] the residual scale


def _make_lanczos_step(loss_fn: Callable[..., chex.Numeric], params: chex.ArrayTree, loss_args: tuple):
  """Returns (flat_params [P], step(flat_params, basis [m+1, P], j, beta_prev) -> (basis, alpha, beta)), jitted.

  `loss_args` go into the jitted step as arguments, not as closed-over constants: a batch of frames
  captured as a constant makes XLA spend seconds constant-folding it at every compile.
  """
  flat_params, unravel = ravel_pytree(params)

  def flat_grad(flat, args):
    return ravel_pytree(jax.grad(loss_fn)(unravel(flat), *args))[0]

  def jitted_step(flat, basis, j, beta_prev, args):
    v = basis[j]
    hv = jax.jvp(lambda x: flat_grad(x, args), (flat,), (v.astype(flat.dtype),))[1].astype(basis.dtype)
    alpha = jnp.dot(hv, v, precision=_HIGHEST)
    previous = jnp.where(j > 0, basis[jnp.maximum(j - 1, 0)], jnp.zeros_like(v))
    w = hv - alpha * v - beta_prev * previous
    # Rows after j are still zero, so projecting on the whole basis re-orthogonalises against v_0..v_j.
    for _ in range(2):
      w = w - jnp.dot(basis.T, jnp.dot(basis, w, precision=_HIGHEST), precision=_HIGHEST)
    beta = jnp.linalg.norm(w)
    basis = basis.at[j + 1].set(w / jnp.where(beta > 0, beta, 1.0))
    return basis, alpha, beta

  donate = () if jax.default_backend() == "cpu" else (1,)  # reuse the basis buffer on accelerators
  compiled = jax.jit(jitted_step, donate_argnums=donate)
  return flat_params, lambda flat, basis, j, beta_prev: compiled(flat, basis, j, beta_prev, loss_args)


def _tridiagonal(alphas, betas) -> np.ndarray:
  k = len(alphas)
  t = np.diag(np.asarray(alphas, np.float64))
  if k > 1:
    off = np.asarray(betas[: k - 1], np.float64)
    t += np.diag(off, 1) + np.diag(off, -1)
  return t


def _lanczos(step, flat_params, start: jax.Array, num_iterations: int, tol: float | None):
  """Runs up to `num_iterations` Lanczos steps from `start` [P]; stops early when the top Ritz pair
  converges (tol) or the Krylov space is invariant. Returns (LanczosResult, top-pair residual, converged)."""
  size = start.shape[0]
  m = min(num_iterations, size)
  basis = jnp.zeros((m + 1, size), jnp.float32).at[0].set(start / jnp.linalg.norm(start))
  alphas: list[float] = []
  betas: list[float] = []
  residual, converged, beta = math.inf, False, 0.0
  with jax.default_matmul_precision("highest"):
    for j in range(m):
      basis, alpha, beta = step(flat_params, basis, j, jnp.float32(beta))
      alphas.append(float(alpha))
      betas.append(float(beta))
      ritz_values, ritz_vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
      # ||H y - theta y|| = beta_j |s_last| for the Ritz pair (theta, y = V s) (Parlett, The Symmetric Eigenvalue Problem).
      residual = abs(betas[-1] * ritz_vectors[-1, -1])
      scale = max(abs(ritz_values[0]), abs(ritz_values[-1]), np.finfo(np.float32).tiny)
      if tol is not None and residual <= tol * max(abs(ritz_values[-1]), np.finfo(np.float32).tiny):
        converged = True
        break
      if betas[-1] <= _BREAKDOWN_RTOL * scale:
        converged = True
        break
  return LanczosResult(np.asarray(alphas), np.asarray(betas)), residual, converged


def top_hessian_eigenvalue(
    loss_fn: Callable[[Any], chex.Numeric],
    params: chex.ArrayTree,
    rng: chex.PRNGKey,
    num_iterations: int = 20,
    tol: float = 1e-3,
    loss_args: tuple = (),
) -> tuple[float, dict[str, Any]]:
  """The largest (algebraic, i.e. most positive) eigenvalue of the Hessian of a scalar `loss_fn(params, *loss_args)`.

  Sharpness as in Lyle et al. 2023 ("Understanding Plasticity in Neural Networks"), who relate
  plasticity loss to the loss landscape's curvature. Lanczos from a Gaussian start vector: the top Ritz
  value of the k x k tridiagonal matrix approaches lambda_max from below; it stops after
  `num_iterations` steps, or earlier once the Ritz residual ||H y - theta y|| <= tol * |theta|.

  Returns:
    (eigenvalue, info) with info = {num_iterations, residual (||H y - theta y||, an eigenvalue of H lies
    within it of theta), converged (bool), min_ritz_value (the most negative curvature found, less
    converged than the top one)}.
  """
  if num_iterations < 1:
    raise ValueError(f"num_iterations={num_iterations} must be >= 1")
  flat_params, step = _make_lanczos_step(loss_fn, params, loss_args)
  start = jax.random.normal(rng, flat_params.shape, jnp.float32)
  result, residual, converged = _lanczos(step, flat_params, start, num_iterations, tol)
  ritz_values = np.linalg.eigvalsh(_tridiagonal(result.alphas, result.betas))
  info = {
      "num_iterations": len(result.alphas),
      "residual": float(residual),
      "converged": bool(converged),
      "min_ritz_value": float(ritz_values[0]),
  }
  return float(ritz_values[-1]), info


class SpectralDensity(NamedTuple):
  """Stochastic Lanczos quadrature of the Hessian spectrum: the density is
  phi(lambda) = (1 / num_probes) sum_p sum_k weights[p, k] delta(lambda - nodes[p, k])."""

  nodes: np.ndarray  # float64[num_probes, num_lanczos], Ritz values of each probe's tridiagonal
  weights: np.ndarray  # float64[num_probes, num_lanczos], squared first components of its eigenvectors; rows sum to 1


def hessian_spectral_density(
    loss_fn: Callable[[Any], chex.Numeric],
    params: chex.ArrayTree,
    rng: chex.PRNGKey,
    num_lanczos: int = 50,
    num_probes: int = 4,
    loss_args: tuple = (),
) -> SpectralDensity:
  """Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019, "An Investigation
  into Neural Net Optimization via Hessian Eigenvalue Density"; Golub & Welsch 1969).

  For each of `num_probes` random unit vectors v, `num_lanczos` Lanczos steps give T = S diag(theta) S^T,
  and v^T f(H) v ~= sum_k S[0, k]^2 f(theta_k): a quadrature rule with nodes theta_k and weights S[0, k]^2.
  Averaging over probes estimates (1/P) tr f(H); with f(x) = x the mean of the density is exactly the
  probes' mean Rayleigh quotient, an unbiased estimate of tr(H) / P. When the Krylov space becomes invariant
  before `num_lanczos` steps (P small), the missing nodes are 0 with weight 0.

  Plot with `density_on_grid`.
  """
  if num_lanczos < 1 or num_probes < 1:
    raise ValueError(f"num_lanczos={num_lanczos} and num_probes={num_probes} must be >= 1")
  flat_params, step = _make_lanczos_step(loss_fn, params, loss_args)
  nodes = np.zeros((num_probes, num_lanczos))
  weights = np.zeros((num_probes, num_lanczos))
  for p, key in enumerate(jax.random.split(rng, num_probes)):
    start = jax.random.normal(key, flat_params.shape, jnp.float32)
    result, _, _ = _lanczos(step, flat_params, start, num_lanczos, tol=None)
    ritz_values, ritz_vectors = np.linalg.eigh(_tridiagonal(result.alphas, result.betas))
    k = len(ritz_values)
    nodes[p, :k] = ritz_values
    weights[p, :k] = ritz_vectors[0] ** 2
  return SpectralDensity(nodes, weights)


def density_on_grid(density: SpectralDensity, grid: chex.Array, sigma: float) -> np.ndarray:
  """The SLQ density smoothed by a Gaussian of width `sigma` (as Ghorbani et al. 2019 plot it), on `grid` [G]."""
  grid = np.asarray(grid, np.float64)[:, None, None]
  kernel = np.exp(-0.5 * ((grid - density.nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
  return (kernel * density.weights).sum(axis=(1, 2)) / density.nodes.shape[0]
