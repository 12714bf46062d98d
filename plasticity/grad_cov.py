"""Normalised covariance of per-example gradients (Lyle et al. 2023, "Understanding Plasticity in Neural
Networks", eq. 3): C_ij = <g_i, g_j> / (||g_i|| ||g_j||), with g_i the gradient of the loss on example i.

Entries near 1 mean the examples' updates agree (the network generalises between them); many negative
entries mean updates interfere, which Lyle et al. see in networks that have lost plasticity.

Zero gradients: an example whose gradient is exactly zero (e.g. every unit on its path is dead) has no
direction. Its row and column of C are 0, its diagonal entry included, and `covariance_summary` leaves it
out (it recognises such rows by their 0 diagonal; every other diagonal entry is 1).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

_HIGHEST = jax.lax.Precision.HIGHEST


def normalize_gram(gram: chex.Array) -> np.ndarray:
  """Gram matrix G_ij = <g_i, g_j> [k, k] -> normalised covariance float64[k, k] (zero-norm rows/cols -> 0)."""
  gram = np.asarray(gram, np.float64)
  chex.assert_rank(gram, 2)
  norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
  valid = norms > 0.0
  denominator = np.where(np.outer(valid, valid), np.outer(norms, norms), 1.0)
  covariance = np.where(np.outer(valid, valid), gram / denominator, 0.0)
  return np.clip(covariance, -1.0, 1.0)  # rounding can leave |C_ij| a hair above 1


def normalized_gradient_covariance(grads: chex.Array) -> np.ndarray:
  """C float64[k, k] of k gradients given as rows, grads [k, P] (Lyle et al. 2023, eq. 3)."""
  chex.assert_rank(grads, 2)
  grads = jnp.asarray(grads, jnp.float32)
  return normalize_gram(jnp.dot(grads, grads.T, precision=_HIGHEST))


def per_example_gradient_covariance(
    per_example_loss_fn: Callable[[chex.ArrayTree, Any], chex.Numeric],
    params: chex.ArrayTree,
    examples: Any,
    chunk_size: int = 64,
) -> np.ndarray:
  """C float64[k, k] of the per-example gradients of `per_example_loss_fn(params, example)`.

  Args:
    per_example_loss_fn: scalar loss of one example (a pytree without the batch axis).
    params: the parameter pytree (P parameters in all).
    examples: a pytree whose leaves have a leading axis [k].
    chunk_size: examples whose gradients are held at once. The Gram matrix is built block by block:
      chunk a's gradients [c, P] stay while every chunk b >= a is recomputed and multiplied in, so memory
      is about 2 * c * P floats (2 x 64 x 1.7M x 4 bytes = 870 MB for a Nature CNN) whatever k is, for
      n(n+1)/2 chunk gradient evaluations (n = ceil(k / c)). The last chunk is padded with copies of
      example 0 (one compile), and the padding is cut off.
  """
  leaves = jax.tree.leaves(examples)
  if not leaves:
    raise ValueError("examples is empty")
  k = int(leaves[0].shape[0])
  if any(leaf.shape[0] != k for leaf in leaves):
    raise ValueError("every leaf of examples needs the same leading axis [k]")
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be >= 1")
  chunk = min(chunk_size, k)
  num_chunks = math.ceil(k / chunk)
  index = np.concatenate([np.arange(k), np.zeros(num_chunks * chunk - k, np.int64)])
  padded = jax.tree.map(lambda leaf: jnp.asarray(leaf)[index], examples)

  def example_grad(p, example):
    return ravel_pytree(jax.grad(per_example_loss_fn)(p, example))[0].astype(jnp.float32)

  chunk_grads = jax.jit(lambda p, batch: jax.vmap(example_grad, in_axes=(None, 0))(p, batch))
  # G_a G_b^T with G_b recomputed inside, so only G_a stays alive between calls.
  cross_block = jax.jit(lambda p, grads_a, batch_b: jnp.dot(grads_a, chunk_grads(p, batch_b).T, precision=_HIGHEST))
  self_block = jax.jit(lambda grads_a: jnp.dot(grads_a, grads_a.T, precision=_HIGHEST))

  def take(a: int):
    return jax.tree.map(lambda leaf: leaf[a * chunk:(a + 1) * chunk], padded)

  gram = np.zeros((num_chunks * chunk, num_chunks * chunk))
  for a in range(num_chunks):
    rows = slice(a * chunk, (a + 1) * chunk)
    grads_a = chunk_grads(params, take(a))
    gram[rows, rows] = np.asarray(self_block(grads_a))
    for b in range(a + 1, num_chunks):
      cols = slice(b * chunk, (b + 1) * chunk)
      block = np.asarray(cross_block(params, grads_a, take(b)))
      gram[rows, cols] = block
      gram[cols, rows] = block.T
    del grads_a
  return normalize_gram(gram[:k, :k])


def covariance_summary(covariance: chex.Array) -> dict[str, float]:
  """Summaries over the off-diagonal entries C_ij, i < j, of examples with a non-zero gradient.

  Returns {mean_offdiag: mean C_ij, frac_negative: share of C_ij < 0, num_zero_gradients: rows left out};
  the first two are NaN when fewer than two examples have a gradient.
  """
  covariance = np.asarray(covariance, np.float64)
  chex.assert_rank(covariance, 2)
  valid = np.diag(covariance) > 0.0
  inner = covariance[np.ix_(valid, valid)]
  upper = inner[np.triu_indices(inner.shape[0], k=1)]
  return {
      "mean_offdiag": float(upper.mean()) if upper.size else math.nan,
      "frac_negative": float((upper < 0.0).mean()) if upper.size else math.nan,
      "num_zero_gradients": int((~valid).sum()),
  }


def save_heatmap_png(covariance: chex.Array, path: str, title: str) -> None:
  """Writes C as a heatmap PNG: diverging colormap (blue -1, white 0, red 1) on the fixed range [-1, 1].

  Uses matplotlib's Agg canvas directly (no pyplot), so it changes no global backend and needs no display.
  """
  # matplotlib: only for the heatmap PNG
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  covariance = np.asarray(covariance, np.float64)
  chex.assert_rank(covariance, 2)
  figure = Figure(figsize=(5.0, 4.2))
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  image = axes.imshow(covariance, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
  figure.colorbar(image, ax=axes)
  axes.set_title(title)
  axes.set_xlabel("example j")
  axes.set_ylabel("example i")
  figure.tight_layout()
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  figure.savefig(path, format="png", dpi=100)
