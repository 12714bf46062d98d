"""TRAC (agents/dqn/trac.py) against a numpy copy of its algorithm (Muppidi et al. 2024; the authors' code as
Plasticine ships it, plasticine/trac.py at aa00b4b), written here from the paper's update with scipy's erfi."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from agents.dqn import DQNConfig, DQNLearner
from agents.dqn.trac import ERFI_ARGUMENT_LIMIT, erfi, trac

BETAS = np.array([0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999])


def test_erfi_equals_scipys_over_the_range_trac_uses():
  x = np.concatenate([np.linspace(-ERFI_ARGUMENT_LIMIT, ERFI_ARGUMENT_LIMIT, 181), [0.0, 1 / np.sqrt(2), 1e-4]])
  np.testing.assert_allclose(np.asarray(erfi(jnp.asarray(x, jnp.float32))), special.erfi(x), rtol=2e-5, atol=1e-10)


def _numpy_trac(theta_0, gradient, learning_rate, steps):
  """TRAC around plain gradient descent, theta = theta_ref + max(S, 0) Delta, in float32 as the authors' torch code
  runs: theta - theta_ref is ~1e-7 of theta in the first steps, so float32's rounding of it is part of what TRAC does
  (h comes from it), and a float64 copy parts from it by a few percent within 40 steps."""
  f32 = np.float32
  ref, theta = theta_0.astype(f32), theta_0.astype(f32)
  betas = BETAS.astype(f32)
  v, sigma, s = np.zeros(6, f32), np.full(6, 1e-8, f32), np.zeros(6, f32)
  thetas, scales = [], []
  for _ in range(steps):
    g = gradient(theta).astype(f32)
    u = f32(-learning_rate) * g
    delta_before = (theta - ref) / (s.sum() + f32(1e-8))
    h = f32(delta_before @ g)
    delta = delta_before + u
    v = betas ** 2 * v + h ** 2
    sigma = betas * sigma - h
    s = (1e-8 / special.erfi(1 / np.sqrt(2)) * special.erfi(sigma / (np.sqrt(2 * v) + f32(1e-8)))).astype(f32)
    theta = ref + max(s.sum(), f32(0.0)) * delta
    thetas.append(theta.copy())
    scales.append(s.sum())
  return np.array(thetas), np.array(scales)


def test_trac_follows_its_algorithm_step_by_step():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(8, 5)), rng.normal(size=8)
  theta_0 = rng.normal(size=5)
  gradient = lambda theta: a.T @ (a @ theta - b)  # noqa: E731 (of 0.5 ||A theta - b||^2)
  expected, scales = _numpy_trac(theta_0, gradient, 0.05, 40)
  optimizer = trac(optax.sgd(0.05))
  params = {"w": jnp.asarray(theta_0, jnp.float32)}
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  for t in range(40):
    grads = {"w": jnp.asarray(gradient(np.asarray(params["w"])), jnp.float32)}
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params["w"]), expected[t], rtol=1e-3, atol=1e-4)  # float32 sums, two orders
    assert float(jnp.sum(state.s)) == pytest.approx(scales[t], rel=1e-2)
  # It does move: the scale has grown from its prior of ~1e-7 and the parameters left theta_0.
  assert scales[-1] > 1e3 * scales[0] and np.abs(expected[-1] - theta_0).max() > 1e-2


def test_the_agent_config_wraps_its_optimizer_in_trac():
  config = DQNConfig(torso="mlp", mlp_hidden_sizes=(16, 8), trac=True)
  learner = DQNLearner(config, 3)
  params = learner.init(jax.random.PRNGKey(0), jnp.zeros((1, 6))).params
  state = learner.optimizer.init(params)
  assert type(state).__name__ == "TracState"
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = learner.optimizer.update(grads, state, params)
  # The first step: theta_ref + S (0 + the base step), S ~ 1e-7, so the parameters barely move.
  moved = max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates))
  assert 0.0 < moved < 1e-6
