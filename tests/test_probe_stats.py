"""Plasticity probe statistics against hand-computed values: pre-activations, srank, dormant and linearized
units, weight norms, effective learning rates, Hessian sharpness and SLQ density, gradient covariance."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from networks import QNetwork
from networks import activations
from plasticity import grad_cov, hessian, stats

OBS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 84, 84, 4)), jnp.uint8)

IMPALA_SHAPES = {}
for _s, (_size, _channels) in enumerate(((42, 16), (21, 32), (11, 32))):
  for _b in range(2):
    IMPALA_SHAPES[f"stage{_s}_block{_b}_in"] = (2, _size, _size, _channels)
    IMPALA_SHAPES[f"stage{_s}_block{_b}_conv0"] = (2, _size, _size, _channels)
EXPECTED_PREACTIVATIONS = {
    "nature": {"conv0": (2, 20, 20, 32), "conv1": (2, 9, 9, 64), "conv2": (2, 7, 7, 64), "dense0": (2, 512)},
    "impala": {**IMPALA_SHAPES, "stages_out": (2, 11, 11, 32), "dense0": (2, 256)},
    "mlp": {"dense0": (2, 64), "dense1": (2, 64)},
}


@functools.lru_cache(maxsize=None)
def _network(torso: str, layer_norm: bool):
  net = QNetwork(3, torso=torso, layer_norm=layer_norm)
  return net, net.init(jax.random.PRNGKey(0), OBS)


# ---------------------------------------------------------------------------------------------------------
# Pre-activations
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("torso", ["nature", "impala", "mlp"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_preactivations_are_captured_for_every_hidden_layer_in_order(torso, layer_norm):
  net, params = _network(torso, layer_norm)
  assert set(params) == {"params"}, "init must not record pre-activations"
  pre = activations.hidden_preactivations(net, params, OBS)
  assert list(pre) == list(EXPECTED_PREACTIVATIONS[torso])  # names, in the order the network runs
  assert {name: tuple(v.shape) for name, v in pre.items()} == EXPECTED_PREACTIVATIONS[torso]
  assert activations.penultimate_layer_name(pre) == list(EXPECTED_PREACTIVATIONS[torso])[-1]
  if layer_norm:  # recorded after the LayerNorm (scale 1, bias 0 at init): zero mean per example
    first = np.asarray(pre[list(pre)[0]])
    np.testing.assert_allclose(first.reshape(2, -1).mean(axis=1), 0.0, atol=1e-4)
  # Without the mutable collection, apply returns the plain QOutput; the head reads relu(last pre-activation).
  plain = net.apply(params, OBS)
  from_features = net.apply(params, activations.penultimate_features(pre), method=net.head_from_features)
  np.testing.assert_array_equal(plain.q_values, from_features.q_values)


def test_preactivations_are_stored_under_the_layer_name_with_a_suffix():
  net, params = _network("mlp", True)
  out, state = net.apply(params, OBS, mutable=["preactivations"])
  assert set(state) == {"preactivations"}
  assert list(state["preactivations"]["torso"]) == ["dense0_preact", "dense1_preact"]
  np.testing.assert_array_equal(out.q_values, net.apply(params, OBS).q_values)


def test_mlp_preactivations_and_outputs_match_a_numpy_forward_pass():
  net, params = _network("mlp", False)
  p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()} for k, layer in params["params"]["torso"].items()}
  head = {n: np.asarray(v, np.float64) for n, v in params["params"]["head"].items()}
  x = np.asarray(OBS, np.float64).reshape(2, -1) / 255.0
  z0 = x @ p["dense0"]["kernel"] + p["dense0"]["bias"]
  z1 = np.maximum(z0, 0) @ p["dense1"]["kernel"] + p["dense1"]["bias"]
  q = np.maximum(z1, 0) @ head["kernel"] + head["bias"]
  pre = activations.hidden_preactivations(net, params, OBS)
  np.testing.assert_allclose(pre["dense0"], z0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pre["dense1"], z1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(net.apply(params, OBS).q_values, q, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Feature statistics
# ---------------------------------------------------------------------------------------------------------


def test_srank_of_a_matrix_with_a_chosen_spectrum():
  rng = np.random.default_rng(1)
  singular_values = np.array([5.0, 2.5, 1.5, 0.65, 0.27, 0.08])  # sum 10: cumulative .5 .75 .9 .965 .992 1
  u, _ = np.linalg.qr(rng.normal(size=(40, 6)))
  v, _ = np.linalg.qr(rng.normal(size=(10, 6)))
  features = (u * singular_values) @ v.T  # [40, 10], rank 6
  assert stats.srank(features, delta=0.01) == 5  # first share >= 0.99 is 0.992
  assert stats.srank(features, delta=0.05) == 4  # >= 0.95: 0.965
  assert stats.srank(features, delta=0.2) == 3  # >= 0.8: 0.9
  assert stats.srank(jnp.asarray(features, jnp.float32), delta=0.05) == 4
  assert stats.srank(np.zeros((5, 3))) == 0


def test_effective_rank_is_exp_entropy_of_the_normalised_spectrum():
  rng = np.random.default_rng(2)
  singular_values = np.array([4.0, 3.0, 2.0, 1.0])  # p = .4 .3 .2 .1
  u, _ = np.linalg.qr(rng.normal(size=(30, 4)))
  v, _ = np.linalg.qr(rng.normal(size=(8, 4)))
  features = (u * singular_values) @ v.T
  entropy = -(0.4 * math.log(0.4) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
  assert stats.effective_rank(features) == pytest.approx(math.exp(entropy), rel=1e-9)  # 3.596...
  assert stats.effective_rank(np.eye(5)) == pytest.approx(5.0)  # a flat spectrum: full rank
  assert stats.effective_rank(np.outer(np.ones(6), np.arange(1.0, 4.0))) == pytest.approx(1.0)  # rank one
  assert stats.effective_rank(np.zeros((4, 3))) == 0.0


def test_feature_norm_is_the_mean_l2_norm_per_example():
  assert stats.feature_norm(np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])) == pytest.approx(2.0)


# Dense post-ReLU activations [N=2, 5 units]: unit means 2, 1, 0, 0.1, 0.9; layer mean 0.8;
# scores 2.5, 1.25, 0, 0.125, 1.125.
DENSE_ACTIVATIONS = np.array([[1.0, 2.0, 0.0, 0.2, 0.9], [3.0, 0.0, 0.0, 0.0, 0.9]])
# Conv [N=2, 2, 2, C=3]: channel 0 always 0, channel 1 is 0.4 at one of 8 positions (mean 0.05),
# channel 2 is 1 everywhere; layer mean 0.35, scores 0, 0.143, 2.857.
CONV_ACTIVATIONS = np.zeros((2, 2, 2, 3))
CONV_ACTIVATIONS[1, 0, 1, 1] = 0.4
CONV_ACTIVATIONS[..., 2] = 1.0


def test_dormant_fraction_dense_and_conv():
  assert stats.dormant_fraction(DENSE_ACTIVATIONS, 0.0) == pytest.approx(1 / 5)
  assert stats.dormant_fraction(DENSE_ACTIVATIONS, 0.1) == pytest.approx(1 / 5)
  assert stats.dormant_fraction(DENSE_ACTIVATIONS, 0.2) == pytest.approx(2 / 5)
  assert stats.dormant_fraction(DENSE_ACTIVATIONS, 1.2) == pytest.approx(3 / 5)
  assert stats.dormant_fraction(DENSE_ACTIVATIONS, 1.3) == pytest.approx(4 / 5)
  np.testing.assert_allclose(activations.dormant_scores(DENSE_ACTIVATIONS), [2.5, 1.25, 0.0, 0.125, 1.125], rtol=1e-5)
  # Units are channels, averaged over batch and positions (not 24 separate units).
  np.testing.assert_allclose(activations.dormant_scores(CONV_ACTIVATIONS), [0.0, 0.05 / 0.35, 1.0 / 0.35], rtol=1e-5)
  assert stats.dormant_fraction(CONV_ACTIVATIONS, 0.0) == pytest.approx(1 / 3)
  assert stats.dormant_fraction(CONV_ACTIVATIONS, 0.1) == pytest.approx(1 / 3)
  assert stats.dormant_fraction(CONV_ACTIVATIONS, 0.2) == pytest.approx(2 / 3)
  assert stats.dormant_fraction(np.zeros((4, 6)), 0.0) == 1.0  # an all-dead layer is fully dormant


def test_network_dormant_fraction_applies_relu_and_pools_units_over_layers():
  # Pre-activations whose ReLU gives the arrays above (negative where the activation is 0).
  preactivations = {
      "conv0": np.where(CONV_ACTIVATIONS > 0, CONV_ACTIVATIONS, -0.7),
      "dense0": np.where(DENSE_ACTIVATIONS > 0, DENSE_ACTIVATIONS, -2.0),
  }
  assert stats.layer_dormant_fractions(preactivations, 0.1) == pytest.approx({"conv0": 1 / 3, "dense0": 1 / 5})
  assert stats.network_dormant_fraction(preactivations, 0.1) == pytest.approx(2 / 8)
  assert stats.network_dormant_fraction(preactivations, 0.2) == pytest.approx(4 / 8)
  # Plasticine's convention (plasticine_metrics/units.py at aa00b4b): the mean of the layers' fractions, by hand.
  assert stats.layer_mean_dormant_fraction(preactivations, 0.1) == pytest.approx((1 / 3 + 1 / 5) / 2)
  assert stats.layer_mean_dormant_fraction(preactivations, 0.2) == pytest.approx((2 / 3 + 2 / 5) / 2)
  assert stats.layer_mean_dormant_fraction(preactivations, 0.2) != pytest.approx(4 / 8)  # not the pooled one


def test_dormant_fourier_units_are_scored_on_the_absolute_sine_and_cosine_as_plasticine_scores_them():
  # plasticine_metrics/units.py:60-61 at aa00b4b: for dff, |activations|; sin and cos are separate units.
  rng = np.random.default_rng(5)
  pre = {"dense0": rng.normal(size=(32, 6)) * 0.05}
  pre["dense0"][:, 0] = 0.0  # sin 0 = 0: a dormant sine unit (its cosine, 1, is not)
  outputs = np.concatenate([np.sin(pre["dense0"]), np.cos(pre["dense0"])], axis=-1)
  score = np.abs(outputs).mean(axis=0)
  expected = float(np.mean(score / (score.mean() + 1e-9) <= 0.025))
  assert stats.network_dormant_fraction(pre, 0.025, "fourier") == pytest.approx(expected)
  assert stats.layer_mean_dormant_fraction(pre, 0.025, "fourier") == pytest.approx(expected)
  assert expected >= 1 / 12  # the zero sine; the small sines (|sin| ~ 0.04 of a mean ~0.5) are dormant too
  assert stats.network_dormant_fraction(pre, 0.025) != pytest.approx(expected)  # relu would score other units


def test_plasticines_dormant_units_equal_an_independent_numpy_copy_of_its_code():
  """Plasticine's compute_dormant_units, written again in numpy: per layer, each unit's mean |activation| over the
  batch (and positions), over the layer's mean + 1e-9; dormant if <= tau (tau 0: isclose to 0); the mean over
  layers of the dormant ratios."""
  rng = np.random.default_rng(3)
  preactivations = {"conv0": rng.normal(size=(16, 5, 5, 8)) - 0.8, "dense0": rng.normal(size=(16, 40)) - 1.2}
  preactivations["dense0"][:, :7] = -1.0  # dead units

  def plasticine(tau):
    ratios = []
    for values in preactivations.values():
      activations = np.abs(np.maximum(values, 0.0))
      score = activations.reshape(-1, activations.shape[-1]).mean(axis=0)
      normalized = score / (score.mean() + 1e-9)
      dormant = normalized <= tau if tau > 0.0 else np.isclose(normalized, 0.0)
      ratios.append(dormant.mean())
    return float(np.mean(ratios))

  for tau in (0.0, 0.025, 0.1, 0.5):
    assert stats.layer_mean_dormant_fraction(preactivations, tau) == pytest.approx(plasticine(tau), abs=1e-6), tau  # float32 means


def test_linearized_fraction_counts_units_positive_on_every_input():
  dense = np.array([[1.0, 0.0, -1.0, 2.0], [0.5, 3.0, -2.0, 0.1], [2.0, 1.0, -0.1, 0.3]])  # units 0 and 3
  conv = np.ones((2, 2, 2, 3))
  conv[1, 1, 0, 1] = -0.5  # channel 1 is negative at one position of one input
  conv[..., 2] = -1.0
  assert stats.linearized_fraction(dense) == pytest.approx(2 / 4)
  assert stats.linearized_fraction(conv) == pytest.approx(1 / 3)
  np.testing.assert_array_equal(stats.linearized_mask(conv), [True, False, False])
  assert stats.network_linearized_fraction({"conv0": conv, "dense0": dense}) == pytest.approx(3 / 7)


def test_preactivation_stats():
  out = stats.preactivation_stats(np.array([[1.0, -1.0], [3.0, 5.0]]))
  assert out == pytest.approx({"mean": 2.0, "std": math.sqrt(5.0)})


# ---------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------

PARAMS = {"params": {
    "torso": {
        "dense0": {"kernel": np.array([[1.0, 2.0], [2.0, 0.0]]), "bias": np.array([0.0, 4.0])},  # 9 + 16
        "dense0_ln": {"scale": np.array([1.0, 1.0]), "bias": np.array([0.0, 0.0])},  # 2
    },
    "head": {"kernel": np.array([[2.0], [0.0]]), "bias": np.array([1.0])},  # 5
}}


def test_param_norms_total_and_per_layer():
  expected = {"total": math.sqrt(32.0), "torso/dense0": 5.0, "torso/dense0_ln": math.sqrt(2.0), "head": math.sqrt(5.0)}
  assert stats.param_norms(PARAMS) == pytest.approx(expected)
  assert stats.param_norms(PARAMS["params"]) == pytest.approx(expected)  # without the collection key


def test_param_change_norms():
  previous = jax.tree.map(np.copy, PARAMS)
  previous["params"]["torso"]["dense0"]["kernel"] = PARAMS["params"]["torso"]["dense0"]["kernel"] + [[0.0, 0.0], [0.0, 3.0]]
  previous["params"]["head"]["bias"] = np.array([-3.0])  # change 4
  expected = {"total": 5.0, "torso/dense0": 3.0, "torso/dense0_ln": 0.0, "head": 4.0}
  assert stats.param_change_norms(PARAMS, previous) == pytest.approx(expected)
  with pytest.raises(ValueError, match="structure"):
    stats.param_change_norms(PARAMS, {"params": {"head": PARAMS["params"]["head"]}})


def test_effective_learning_rate_only_for_layers_followed_by_layer_norm():
  assert stats.effective_learning_rates(PARAMS, 0.1) == pytest.approx({"torso/dense0": 0.1 / 9.0})
  _, nature_ln = _network("nature", True)
  rates = stats.effective_learning_rates(nature_ln, 1e-4)
  assert set(rates) == {"torso/conv0", "torso/conv1", "torso/conv2", "torso/dense0"}
  kernel = np.asarray(nature_ln["params"]["torso"]["conv1"]["kernel"], np.float64)
  assert rates["torso/conv1"] == pytest.approx(1e-4 / np.sum(kernel**2), rel=1e-5)
  _, impala_ln = _network("impala", True)  # the residual stream's LayerNorms follow no single layer
  assert set(stats.effective_learning_rates(impala_ln, 1e-4)) == {
      f"torso/stage{s}_block{b}_conv0" for s in range(3) for b in range(2)} | {"torso/dense0"}
  for torso in ("nature", "impala", "mlp"):
    assert stats.effective_learning_rates(_network(torso, False)[1], 1e-4) == {}


# ---------------------------------------------------------------------------------------------------------
# Hessian
# ---------------------------------------------------------------------------------------------------------


def _quadratic(spectrum, seed=0):
  """0.5 x^T A x with A = Q diag(spectrum) Q^T, on params {'a': [10], 'b': [n-10]} (a pytree)."""
  n = len(spectrum)
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  a = jnp.asarray((q * np.asarray(spectrum)) @ q.T, jnp.float32)

  def loss_fn(params):
    x = jnp.concatenate([params["a"], params["b"].reshape(-1)])
    return 0.5 * x @ a @ x

  params = {"a": jnp.ones(10), "b": jnp.ones(((n - 10) // 5, 5))}
  return loss_fn, params


SPECTRUM = np.concatenate([[5.0, 2.0, 1.0, 0.5], np.linspace(0.05, 0.4, 26)])  # n = 30


def test_top_hessian_eigenvalue_of_a_quadratic():
  loss_fn, params = _quadratic(SPECTRUM)
  top, info = hessian.top_hessian_eigenvalue(loss_fn, params, jax.random.PRNGKey(0), num_iterations=20)
  assert top == pytest.approx(5.0, rel=0.01)
  assert info["converged"] and info["num_iterations"] <= 20 and info["residual"] <= 1e-3 * 5.0


def test_top_hessian_eigenvalue_is_the_largest_algebraic_not_the_largest_magnitude():
  spectrum = np.concatenate([[3.0, 1.0, -6.0], np.linspace(-0.5, 0.5, 27)])
  loss_fn, params = _quadratic(spectrum, seed=1)
  top, info = hessian.top_hessian_eigenvalue(loss_fn, params, jax.random.PRNGKey(1), num_iterations=30, tol=1e-4)
  assert top == pytest.approx(3.0, rel=0.01)
  assert info["min_ritz_value"] == pytest.approx(-6.0, rel=0.01)


def test_slq_density_recovers_the_spectrum_mean_and_its_eigenvalues():
  # n = 400: each probe's mean is a Rayleigh quotient v^T H v, whose sd here is ~8% of tr(H)/n; 32 probes -> ~1.4%.
  spectrum = np.concatenate([[5.0, 2.0, 1.0, 0.5], np.linspace(0.05, 0.4, 396)])
  loss_fn, params = _quadratic(spectrum)
  density = hessian.hessian_spectral_density(loss_fn, params, jax.random.PRNGKey(2), num_lanczos=12, num_probes=32)
  assert density.nodes.shape == density.weights.shape == (32, 12)
  np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, rtol=1e-6)
  mean = float((density.nodes * density.weights).sum() / 32)
  assert mean == pytest.approx(spectrum.mean(), rel=0.05)  # trace / n
  # The top node converges to lambda_max, which carries about 1/n of the mass.
  assert density.nodes.max() == pytest.approx(5.0, rel=0.01)
  # 30 Lanczos steps on a 30-dim Hessian span everything: the nodes are its eigenvalues.
  loss_fn, params = _quadratic(SPECTRUM)
  exact = hessian.hessian_spectral_density(loss_fn, params, jax.random.PRNGKey(3), num_lanczos=40, num_probes=1)
  np.testing.assert_allclose(np.sort(exact.nodes[0, :30]), np.sort(SPECTRUM), atol=2e-3)
  np.testing.assert_array_equal(exact.weights[0, 30:], 0.0)
  grid = np.linspace(-1.0, 6.0, 2001)
  smooth = hessian.density_on_grid(density, grid, sigma=0.05)
  assert np.trapz(smooth, grid) == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------------------
# Gradient covariance
# ---------------------------------------------------------------------------------------------------------


def test_normalized_gradient_covariance_of_constructed_gradients():
  grads = np.array([
      [1.0, 0.0, 0.0],  # 0
      [0.0, 1.0, 0.0],  # 1: orthogonal to 0
      [2.0, 0.0, 0.0],  # 2: same direction as 0
      [-1.0, 0.0, 0.0],  # 3: opposite to 0
      [0.0, 0.0, 0.0],  # 4: zero gradient, excluded
      [1.0, 1.0, 0.0],  # 5: 45 degrees from 0 and 1
  ])
  r = 1 / math.sqrt(2)
  expected = np.array([
      [1, 0, 1, -1, 0, r],
      [0, 1, 0, 0, 0, r],
      [1, 0, 1, -1, 0, r],
      [-1, 0, -1, 1, 0, -r],
      [0, 0, 0, 0, 0, 0],
      [r, r, r, -r, 0, 1],
  ])
  covariance = grad_cov.normalized_gradient_covariance(grads)
  np.testing.assert_allclose(covariance, expected, atol=1e-6)
  # Off-diagonal pairs of the 5 non-zero gradients: 0, 1, -1, 0, 0, -1, r, r, r, -r.
  summary = grad_cov.covariance_summary(covariance)
  assert summary["mean_offdiag"] == pytest.approx((-1 + 2 * r) / 10, abs=1e-6)
  assert summary["frac_negative"] == pytest.approx(3 / 10)
  assert summary["num_zero_gradients"] == 1
  single = grad_cov.covariance_summary(grad_cov.normalized_gradient_covariance(grads[:1]))
  assert math.isnan(single["mean_offdiag"]) and math.isnan(single["frac_negative"])


def test_chunked_per_example_covariance_equals_a_direct_computation():
  net = QNetwork(3, torso="mlp", mlp_hidden_sizes=(8,))
  rng = np.random.default_rng(4)
  examples = {
      "obs": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
      "action": jnp.asarray(rng.integers(0, 3, 7), jnp.int32),
      "target": jnp.asarray(rng.normal(size=7), jnp.float32),
      "weight": jnp.asarray([1, 1, 0, 1, 1, 1, 1], jnp.float32),  # example 2 has an exactly zero gradient
  }
  params = net.init(jax.random.PRNGKey(5), examples["obs"])

  def per_example_loss(p, ex):
    q = net.apply(p, ex["obs"][None]).q_values[0, ex["action"]]
    return ex["weight"] * (q - ex["target"]) ** 2

  direct = []
  grad_fn = jax.jit(jax.grad(per_example_loss))  # one example at a time, no vmap and no chunks
  for i in range(7):
    g = grad_fn(params, jax.tree.map(lambda x: x[i], examples))
    direct.append(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(g)]).astype(np.float64))
  direct = np.stack(direct)
  norms = np.linalg.norm(direct, axis=1)
  assert norms[2] == 0.0 and (np.delete(norms, 2) > 0).all()
  valid = norms > 0
  expected = np.where(np.outer(valid, valid), direct @ direct.T / np.outer(np.maximum(norms, 1e-30), np.maximum(norms, 1e-30)), 0.0)
  for chunk_size in (3, 64):  # three padded chunks, and one chunk
    covariance = grad_cov.per_example_gradient_covariance(per_example_loss, params, examples, chunk_size=chunk_size)
    np.testing.assert_allclose(covariance, expected, atol=1e-5)
  assert grad_cov.covariance_summary(covariance)["num_zero_gradients"] == 1


def test_heatmap_is_a_valid_png(tmp_path):
  import matplotlib.image

  path = tmp_path / "plots" / "grad_cov.png"
  grad_cov.save_heatmap_png(np.array([[1.0, -1.0, 0.2], [-1.0, 1.0, 0.0], [0.2, 0.0, 1.0]]), str(path), "step 100")
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  image = matplotlib.image.imread(str(path))
  assert image.shape[:2] == (420, 500) and image.std() > 0.05


def test_the_probe_set_runs_on_a_fourier_network_without_relu_only_metrics():
  """Deep Fourier features have no ReLU: the probes score their |sin|, |cos| units and write no linearized keys."""
  import jax

  from agents.dqn import DQNConfig, DQNLearner
  from plasticity.config import ProbeConfig
  from plasticity.probes import probe_checkpoint

  learner = DQNLearner(DQNConfig(torso="mlp", mlp_hidden_sizes=(8, 6), activation="fourier"), 3)
  rng = np.random.default_rng(0)
  inputs = {"obs_tm1": rng.normal(size=(16, 5)).astype(np.float32), "a_tm1": rng.integers(0, 3, 16).astype(np.int32),
            "r_t": rng.normal(size=16).astype(np.float32), "discount_t": np.full(16, 0.99, np.float32),
            "obs_t": rng.normal(size=(16, 5)).astype(np.float32)}
  state = learner.init(jax.random.PRNGKey(0), inputs["obs_tm1"])
  config = ProbeConfig(inputs=16, num_targets=1, probe_steps=5, target_batch_size=8, hessian_examples=8,
                       hessian_iterations=3, grad_cov_examples=8, heatmaps=False, fresh_reference=False).resolved("cpu")
  row = probe_checkpoint(learner, state, inputs, None, config, step=1)
  assert 0 <= row["dormant_frac_tau_0025"] <= 1 and "dormant_frac_tau_0025/dense1" in row
  assert 1 <= row["srank"] <= 12  # of the 12 features, sin and cos of 6 units
  assert not any(key.startswith("linearized_frac") for key in row)
