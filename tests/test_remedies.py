"""Plasticity remedies (agents/dqn/remedies.py and DQNLearner.apply_remedies), each against a hand-computed
expectation, their validation, their composition, and their schedule across a checkpoint on disk."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from agents.dqn import DQNConfig, DQNLearner, Transition, remedies
from agents.dqn.config import ConfigError
from common.checkpoints import CheckpointStore
from networks.spectral_norm import SPECTRAL_NORM, SNDense, power_step

NUM_ACTIONS = 3
MLP = dict(torso="mlp", mlp_hidden_sizes=(16, 8), target_update_period_updates=1000)


def _batch(key, n=32, dim=6, actions=NUM_ACTIONS):
  k = jax.random.split(key, 4)
  obs = jax.random.normal(k[0], (n, dim))
  return Transition(obs, jax.random.randint(k[1], (n,), 0, actions), jax.random.normal(k[2], (n,)),
                    jnp.full((n,), 0.99), jax.random.normal(k[3], (n, dim)))


def _trained(config, steps=3, seed=0):
  """A learner and its state after `steps` plain updates (non-zero optimizer moments), and the batch."""
  learner = DQNLearner(config, NUM_ACTIONS)
  batch = _batch(jax.random.PRNGKey(seed + 1))
  state = learner.init(jax.random.PRNGKey(seed), batch.obs_tm1)
  plain = DQNLearner(dataclasses.replace(config, reset_period_updates=0, shrink_perturb_period_updates=0,
                                         redo_period_updates=0, optimizer_reset_period_updates=0), NUM_ACTIONS)
  for _ in range(steps):
    state, _ = plain.update(state, batch)
  return learner, state, batch


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _moments(opt_state):
  """{param path: array} for every optimizer leaf that mirrors a parameter (RMSProp's mu and nu)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    if "params" in keys:
      out["/".join(map(str, keys))] = np.asarray(leaf)
  return out


def _expected_fresh(learner, state, obs):
  """The fresh initialisation apply_remedies draws for its first event: network.init(split(rng)[1])."""
  _, key = jax.random.split(state.rng)
  return _flat(learner.network.init(key, obs[:1]))


def _step_to(learner, state, batch, step):
  """Plain updates until the counter is at `step`."""
  while int(state.step) < step:
    state, _ = learner.update(state, batch)
  return state


# -- layer selection --------------------------------------------------------------------------------------------


def test_layers_are_the_torso_layers_in_order_then_the_head():
  learner = DQNLearner(DQNConfig(torso="nature", layer_norm=True), NUM_ACTIONS)
  params = learner.network.init(jax.random.PRNGKey(0), jnp.zeros((1, 84, 84, 4), jnp.uint8))
  assert remedies.network_layers(params) == ["torso/conv0", "torso/conv1", "torso/conv2", "torso/dense0", "head"]
  assert remedies.select_layers(params, "last:2") == ["torso/dense0", "head"]
  assert remedies.select_layers(params, "torso") == ["torso/conv0", "torso/conv1", "torso/conv2", "torso/dense0"]
  assert remedies.select_layers(params, "head") == ["head"]
  masks = remedies.layer_masks(params, ["torso/dense0"])
  assert {"/".join(p) for p, m in masks.items() if m} == {"params/torso/dense0/kernel", "params/torso/dense0/bias",
                                                          "params/torso/dense0_ln/scale", "params/torso/dense0_ln/bias"}
  with pytest.raises(ValueError, match="asks for 6 layers; this network has 5"):
    remedies.select_layers(params, "last:6")


def test_due_is_a_multiple_of_the_period_within_the_advance():
  assert [s for s in range(1, 13) if remedies.due(4, s - 1, s)] == [4, 8, 12]
  assert remedies.due(4, 2, 6) and not remedies.due(4, 4, 7) and not remedies.due(0, 0, 100)


# -- resets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_optimizer", [True, False])
def test_reset_draws_the_head_afresh_and_leaves_the_torso(reset_optimizer):
  config = DQNConfig(**MLP, reset_period_updates=4, reset_layers="head", reset_optimizer_state=reset_optimizer)
  learner, state, batch = _trained(config, steps=3)
  before, moments_before = _flat(state.params), _moments(state.opt_state)
  state, metrics = learner.update(state, batch)  # update 4
  target_before = _flat(state.target_params)
  after_update = _flat(state.params)
  fresh = _expected_fresh(learner, state, batch.obs_tm1)
  moments_update = _moments(state.opt_state)
  state, events = learner.apply_remedies(state, batch, step_before=3)
  after = _flat(state.params)
  assert [e.remedy for e in events] == ["reset"] and events[0].units == {"head": NUM_ACTIONS}
  for path in after:
    expected = fresh[path] if path.startswith("params/head") else after_update[path]
    np.testing.assert_array_equal(after[path], expected, err_msg=path)
    target = fresh[path] if path.startswith("params/head") else target_before[path]  # the target follows the reset
    np.testing.assert_array_equal(_flat(state.target_params)[path], target, err_msg=path)
  assert any(not np.array_equal(before[p], after_update[p]) for p in before)  # the update itself moved things
  for path, value in _moments(state.opt_state).items():
    if "head" in path and reset_optimizer:
      assert not value.any(), path
    else:
      np.testing.assert_array_equal(value, moments_update[path], err_msg=path)
  assert moments_before


def test_reset_last_k_layers():
  config = DQNConfig(**MLP, reset_period_updates=1, reset_layers="last:2")
  learner, state, batch = _trained(config, steps=0)
  state, _ = learner.update(state, batch)
  fresh = _expected_fresh(learner, state, batch.obs_tm1)
  kept = _flat(state.params)
  state, events = learner.apply_remedies(state, batch, 0)
  assert events[0].layers == ["torso/dense1", "head"] and events[0].units == {"torso/dense1": 8, "head": 3}
  for path, value in _flat(state.params).items():
    reset = path.startswith(("params/head", "params/torso/dense1/"))
    np.testing.assert_array_equal(value, fresh[path] if reset else kept[path], err_msg=path)


# -- shrink-and-perturb -----------------------------------------------------------------------------------------


def test_periodic_shrink_perturb_interpolates_toward_a_fresh_draw():
  config = DQNConfig(**MLP, shrink_perturb_period_updates=2, shrink_perturb_layers="torso", shrink_factor=0.7,
                     perturb_factor=0.4, shrink_perturb_reset_optimizer=False)
  learner, state, batch = _trained(config, steps=2)
  fresh = _expected_fresh(learner, state, batch.obs_tm1)
  old, moments = _flat(state.params), _moments(state.opt_state)
  state, events = learner.apply_remedies(state, batch, 1)
  assert events[0].remedy == "shrink_perturb" and events[0].layers == ["torso/dense0", "torso/dense1"]
  for path, value in _flat(state.params).items():
    expected = 0.7 * old[path] + 0.4 * fresh[path] if path.startswith("params/torso") else old[path]
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=path)
  for path, value in _moments(state.opt_state).items():
    np.testing.assert_array_equal(value, moments[path])


def test_soft_shrink_perturb_pulls_every_update_toward_a_new_draw():
  c = 0.05
  learner_c, state, batch = _trained(DQNConfig(**MLP, soft_shrink_perturb=c), steps=2)
  plain = DQNLearner(DQNConfig(**MLP), NUM_ACTIONS)
  expected_update, _ = plain.update(state, batch)
  fresh_key = jax.random.fold_in(jax.random.split(state.rng)[1], 1)
  fresh = _flat(learner_c.network.init(fresh_key, batch.obs_tm1[:1]))
  pulled, _ = learner_c.update(state, batch)
  updated = _flat(expected_update.params)
  for path, value in _flat(pulled.params).items():
    np.testing.assert_allclose(value, (1 - c) * updated[path] + c * fresh[path], rtol=1e-5, atol=1e-7)
  # A different draw at the next update: the pull is toward new noise each time, not a fixed point.
  next_key = jax.random.fold_in(jax.random.split(pulled.rng)[1], 1)
  assert not np.array_equal(_flat(learner_c.network.init(next_key, batch.obs_tm1[:1]))["params/head/kernel"],
                            fresh["params/head/kernel"])


def test_soft_shrink_perturb_toward_the_initial_parameters_pulls_to_the_same_theta_0_every_update():
  # Plasticine at aa00b4b (c51_atari_base.py:141-159): p <- shrink p + (1 - shrink) p_0, p_0 kept from the start.
  c = 0.05
  config = DQNConfig(**MLP, soft_shrink_perturb=c, soft_shrink_perturb_toward="initial")
  learner = DQNLearner(config, NUM_ACTIONS)
  batch = _batch(jax.random.PRNGKey(1))
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  theta_0 = _flat(state.params)
  plain = DQNLearner(DQNConfig(**MLP), NUM_ACTIONS)
  plain_state = plain.init(jax.random.PRNGKey(0), batch.obs_tm1)  # the same theta_0 (same seed)
  assert all(np.array_equal(theta_0[k], v) for k, v in _flat(plain_state.params).items())
  for _ in range(3):
    expected, _ = plain.update(state._replace(opt_state=plain_state.opt_state), batch)
    plain_state = plain_state._replace(opt_state=expected.opt_state)
    state, _ = learner.update(state, batch)
    for path, value in _flat(state.params).items():  # (1 - c) x (the plain step) + c theta_0, with the first theta_0
      np.testing.assert_allclose(value, (1 - c) * _flat(expected.params)[path] + c * theta_0[path], rtol=1e-5,
                                 atol=1e-7)


# -- ReDo -------------------------------------------------------------------------------------------------------


def _numpy_dormant(pre, tau):
  """Sokar et al. 2023 score by hand: E|relu(h)| per unit over all but the last axis, over the layer mean."""
  act = np.maximum(np.asarray(pre, np.float64), 0.0)
  per_unit = np.abs(act).reshape(-1, act.shape[-1]).mean(axis=0)
  return per_unit / (per_unit.mean() + 1e-9) <= tau


def test_redo_recycles_dormant_dense_units():
  config = DQNConfig(**MLP, redo_period_updates=4, redo_tau=0.1)
  learner, state, batch = _trained(config, steps=3)
  params = jax.tree.map(np.array, state.params)
  dead = [2, 5, 11]
  params["params"]["torso"]["dense0"]["kernel"][:, dead] = 0.0
  params["params"]["torso"]["dense0"]["bias"][dead] = -1.0  # relu(-1) = 0 on every input
  state = state._replace(params=jax.tree.map(jnp.asarray, params))
  state, _ = learner.update(state, batch)  # update 4 keeps them dead (zero gradient through a dead relu)
  before, moments = _flat(state.params), _moments(state.opt_state)
  target_before = _flat(state.target_params)
  fresh = _expected_fresh(learner, state, batch.obs_tm1)
  # Independent pre-activations: x @ W + b by hand.
  pre0 = np.asarray(batch.obs_tm1) @ before["params/torso/dense0/kernel"] + before["params/torso/dense0/bias"]
  pre1 = np.maximum(pre0, 0) @ before["params/torso/dense1/kernel"] + before["params/torso/dense1/bias"]
  dormant0, dormant1 = _numpy_dormant(pre0, 0.1), _numpy_dormant(pre1, 0.1)
  assert dormant0[dead].all()
  state, events = learner.apply_remedies(state, batch, 3)
  assert events[0].units == {"torso/dense0": int(dormant0.sum()), "torso/dense1": int(dormant1.sum())}
  after = _flat(state.params)
  for name, dormant, rows, reader in (("dense0", dormant0, slice(None), "params/torso/dense1/kernel"),
                                      ("dense1", dormant1, ~dormant0, "params/head/kernel")):
    kernel, bias = f"params/torso/{name}/kernel", f"params/torso/{name}/bias"
    # Fresh incoming weights, except the rows reading a recycled unit of the layer before: those are zero.
    np.testing.assert_array_equal(after[kernel][rows][:, dormant], fresh[kernel][rows][:, dormant])
    np.testing.assert_array_equal(after[bias][dormant], fresh[bias][dormant])
    assert not after[reader][dormant].any()  # nothing reads a recycled unit yet
  keep0 = ~dormant0
  np.testing.assert_array_equal(after["params/torso/dense0/kernel"][:, keep0], before["params/torso/dense0/kernel"][:, keep0])
  keep_rows, keep_cols = ~dormant0, ~dormant1
  np.testing.assert_array_equal(after["params/torso/dense1/kernel"][np.ix_(keep_rows, keep_cols)],
                                before["params/torso/dense1/kernel"][np.ix_(keep_rows, keep_cols)])
  # Optimizer moments: zero on every recycled weight, unchanged elsewhere.
  for path, value in _moments(state.opt_state).items():
    param = "params/" + path.split("/params/", 1)[1]
    if param == "params/torso/dense0/kernel":
      assert not value[:, dormant0].any() and np.array_equal(value[:, keep0], moments[path][:, keep0])
    if param == "params/torso/dense1/kernel":
      assert not value[dormant0].any() and not value[:, dormant1].any()
  target = _flat(state.target_params)["params/torso/dense0/kernel"]  # recycled entries follow; the rest lags
  np.testing.assert_array_equal(target[:, dormant0], after["params/torso/dense0/kernel"][:, dormant0])
  np.testing.assert_array_equal(target[:, keep0], target_before["params/torso/dense0/kernel"][:, keep0])


def test_redo_zeroes_every_position_of_a_conv_channel_in_the_dense_layer_reading_it():
  config = DQNConfig(torso="nature", redo_period_updates=1, redo_tau=0.0)
  learner = DQNLearner(config, NUM_ACTIONS)
  obs = jax.random.randint(jax.random.PRNGKey(3), (4, 84, 84, 4), 0, 255).astype(jnp.uint8)
  batch = Transition(obs, jnp.zeros(4, jnp.int32), jnp.zeros(4), jnp.ones(4), obs)
  state = learner.init(jax.random.PRNGKey(0), obs)
  params = jax.tree.map(np.array, state.params)
  params["params"]["torso"]["conv2"]["kernel"][..., 7] = 0.0
  params["params"]["torso"]["conv2"]["bias"][7] = -1.0  # channel 7 of conv2 is dead everywhere
  state = state._replace(params=jax.tree.map(jnp.asarray, params), step=jnp.asarray(1, jnp.int32))
  state, events = learner.apply_remedies(state, batch, 0)
  assert events[0].units["torso/conv2"] >= 1
  dense = np.asarray(state.params["params"]["torso"]["dense0"]["kernel"]).reshape(7, 7, 64, 512)  # [H, W, C] rows
  assert not dense[:, :, 7, :].any()
  assert dense[:, :, 6, :].any() and dense[:, :, 8, :].any()


def test_redo_with_crelu_recycles_a_unit_only_when_both_halves_are_dormant():
  config = DQNConfig(**MLP, activation="crelu", redo_period_updates=1, redo_tau=0.0)
  learner, state, batch = _trained(config, steps=0)
  params = jax.tree.map(np.array, state.params)
  params["params"]["torso"]["dense0"]["kernel"][:, [1, 4]] = 0.0
  params["params"]["torso"]["dense0"]["bias"][[1, 4]] = 0.0  # x = 0: relu(x) and relu(-x) both 0
  params["params"]["torso"]["dense0"]["bias"][[3]] = 50.0  # relu(-x) dead, relu(x) alive: not recycled
  state = state._replace(params=jax.tree.map(jnp.asarray, params), step=jnp.asarray(1, jnp.int32))
  state, events = learner.apply_remedies(state, batch, 0)
  assert events[0].units["torso/dense0"] == 2
  reader = np.asarray(state.params["params"]["torso"]["dense1"]["kernel"])  # [2 * 16, 8]: relu(x) rows then relu(-x)
  assert not reader[[1, 4, 17, 20]].any() and reader[[3, 19]].any()


# -- L2 toward the initial parameters, optimizer reset ---------------------------------------------------------


def test_l2_init_adds_the_gradient_of_the_penalty_before_the_optimizer():
  p0 = {"w": jnp.array([1.0, -2.0, 0.5])}
  transform = remedies.l2_init(0.25)
  state = transform.init(p0)
  p = {"w": jnp.array([1.5, -2.0, -0.5])}
  g = {"w": jnp.array([0.1, 0.2, 0.3])}
  updates, _ = transform.update(g, state, p)
  np.testing.assert_allclose(updates["w"], [0.1 + 0.5 * 0.5, 0.2, 0.3 + 0.5 * -1.0], rtol=1e-6)
  # Through the whole optimizer: RMSProp sees grad + 2 lambda (theta - theta_0), as if the loss had the penalty.
  config = DQNConfig(**MLP, l2_init=0.25)
  with_l2 = DQNLearner(config, NUM_ACTIONS).optimizer
  without = DQNLearner(DQNConfig(**MLP), NUM_ACTIONS).optimizer
  got, _ = with_l2.update(g, with_l2.init(p0), p)
  want, _ = without.update({"w": g["w"] + 0.5 * (p["w"] - p0["w"])}, without.init(p0), p)
  np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)


def test_l2_init_in_plasticines_norm_form_adds_the_gradient_of_the_unsquared_norm():
  # Plasticine at aa00b4b (c51_atari_base.py:360-374): c * torch.norm(cat(params) - cat(params_0), 2).
  p0 = {"params": {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.0, 3.0]])}}
  p = {"params": {"a": jnp.array([1.5, -2.0, -0.5]), "b": jnp.array([[2.0, 3.0]])}}
  g = {"params": {"a": jnp.array([0.1, 0.2, 0.3]), "b": jnp.array([[0.0, -1.0]])}}
  transform = remedies.l2_init(0.25, "norm")
  updates, _ = transform.update(g, transform.init(p0), p)
  difference = np.array([0.5, 0.0, -1.0, 2.0, 0.0])  # a then b, as one vector
  norm = np.sqrt(np.sum(difference ** 2))  # sqrt(5.25)
  np.testing.assert_allclose(updates["params"]["a"], [0.1 + 0.25 * 0.5 / norm, 0.2, 0.3 - 0.25 / norm], rtol=1e-6)
  np.testing.assert_allclose(updates["params"]["b"], [[0.25 * 2.0 / norm, -1.0]], rtol=1e-6)
  # The same as the gradient of the penalty itself, by autodiff of an independent function.
  penalty = jax.grad(lambda q: 0.25 * jnp.sqrt(sum(jnp.sum((q["params"][k] - p0["params"][k]) ** 2) for k in "ab")))(p)
  for k in "ab":
    np.testing.assert_allclose(updates["params"][k] - g["params"][k], penalty["params"][k], rtol=1e-6)
  same, _ = transform.update(g, transform.init(p0), p0)  # at theta_0: no pull (the norm's subgradient 0), no NaN
  assert all(np.array_equal(same["params"][k], g["params"][k]) for k in "ab")
  # Through the learner's optimizer, chosen by the config.
  config = DQNConfig(**MLP, l2_init=0.25, l2_init_form="norm")
  with_norm = DQNLearner(config, NUM_ACTIONS).optimizer
  without = DQNLearner(DQNConfig(**MLP), NUM_ACTIONS).optimizer
  got, _ = with_norm.update(g, with_norm.init(p0), p)
  want, _ = without.update(jax.tree.map(lambda a, b: a + b, g, penalty), without.init(p0), p)
  for k in "ab":
    np.testing.assert_allclose(got["params"][k], want["params"][k], rtol=1e-6)


def _numpy_parseval_gradient(kernel, coefficient, scale):
  """d/dK of c ||W W^T - s I||_F^2 with W = K flattened to [fan_in, out] and transposed: 4 c (W W^T - s I) W, back
  in K's layout (by hand, float64)."""
  k = np.asarray(kernel, np.float64)
  w = k.reshape(-1, k.shape[-1]).T
  gram = w @ w.T
  return (4.0 * coefficient * (gram - scale * np.eye(len(gram))) @ w).T.reshape(k.shape)


def test_parseval_regularization_adds_the_gradient_of_its_penalty_on_the_selected_layers_only():
  rng = np.random.default_rng(0)
  params = {"params": {"torso": {"conv0": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
                                 "dense0": {"kernel": rng.normal(size=(36, 5)), "bias": rng.normal(size=5)}},
                       "head": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)}}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  c, s = 1e-2, 2.0
  # The penalty itself, by hand: c sum_l ||W W^T - s I||^2 over conv0 and dense0 (the torso).
  expected_penalty = c * sum(float(np.sum(np.square(w @ w.T - s * np.eye(len(w))))) for w in (
      np.asarray(params["params"]["torso"][n]["kernel"], np.float64).reshape(-1, k).T
      for n, k in (("conv0", 4), ("dense0", 5))))
  assert float(remedies.parseval_penalty(params, c, s, ["torso/conv0", "torso/dense0"])) == pytest.approx(
      expected_penalty, rel=1e-5)
  transform = remedies.parseval(c, s, "torso")
  updates, _ = transform.update(grads, transform.init(params), params)
  for layer in ("conv0", "dense0"):
    kernel = params["params"]["torso"][layer]["kernel"]
    np.testing.assert_allclose(updates["params"]["torso"][layer]["kernel"],
                               0.5 + _numpy_parseval_gradient(kernel, c, s), rtol=2e-4, atol=1e-5)
    np.testing.assert_array_equal(updates["params"]["torso"][layer]["bias"], 0.5)  # biases are not regularised
  np.testing.assert_array_equal(updates["params"]["head"]["kernel"], 0.5)  # nor the output layer, under "torso"
  head_too, _ = remedies.parseval(c, s, "all").update(grads, optax.EmptyState(), params)
  np.testing.assert_allclose(head_too["params"]["head"]["kernel"],
                             0.5 + _numpy_parseval_gradient(params["params"]["head"]["kernel"], c, s), rtol=2e-4)
  # Through the learner's optimizer, chosen by the config: the plain optimizer fed grads + the penalty's gradient.
  config = DQNConfig(**MLP, parseval=c, parseval_scale=s)
  learner = DQNLearner(config, NUM_ACTIONS)
  batch = _batch(jax.random.PRNGKey(1))
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  plain = DQNLearner(DQNConfig(**MLP), NUM_ACTIONS).optimizer
  g = jax.tree.map(jnp.ones_like, state.params)
  got, _ = learner.optimizer.update(g, learner.optimizer.init(state.params), state.params)
  layers = ["torso/dense0", "torso/dense1"]
  penalty_grads = jax.grad(remedies.parseval_penalty)(state.params, c, s, layers)
  want, _ = plain.update(jax.tree.map(jnp.add, g, penalty_grads), plain.init(state.params), state.params)
  for path, value in _flat(got).items():
    np.testing.assert_allclose(value, _flat(want)[path], rtol=1e-5, atol=1e-7)
  dense0 = state.params["params"]["torso"]["dense0"]["kernel"]
  np.testing.assert_allclose(penalty_grads["params"]["torso"]["dense0"]["kernel"],
                             _numpy_parseval_gradient(dense0, c, s), rtol=1e-4, atol=1e-6)


def test_normalize_and_project_holds_every_hidden_layers_norms_at_their_initial_values():
  # Lyle et al. 2024: after every update, each hidden layer (kernel and bias as one vector) and each LayerNorm
  # (scale and offset as one vector) back at its initial norm; the head trains freely.
  config = DQNConfig(**MLP, layer_norm=True, nap=True, learning_rate=0.05)
  learner = DQNLearner(config, NUM_ACTIONS)
  batch = _batch(jax.random.PRNGKey(1))
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)

  def group_norms(params):
    torso = params["params"]["torso"]
    return {name: float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in torso[name].values())))
            for name in torso}

  initial, initial_head = group_norms(state.params), _flat(state.params)["params/head/kernel"]
  assert sorted(initial) == ["dense0", "dense0_ln", "dense1", "dense1_ln"]
  plain = DQNLearner(dataclasses.replace(config, nap=False), NUM_ACTIONS)
  unprojected, _ = plain.update(state._replace(opt_state=plain.optimizer.init(state.params)), batch)
  assert any(abs(group_norms(unprojected.params)[n] - initial[n]) > 1e-3 * initial[n] for n in initial)  # it moves
  for _ in range(5):
    state, _ = learner.update(state, batch)
    norms = group_norms(state.params)
    for name, norm in initial.items():
      assert norms[name] == pytest.approx(norm, rel=1e-5), name
  assert not np.allclose(_flat(state.params)["params/head/kernel"], initial_head)
  # The projection itself, by hand: a layer's (kernel, bias) to its initial norm 5, a LayerNorm's (scale, bias)
  # to sqrt(2); the head untouched.
  params = {"params": {"torso": {"dense0": {"kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "bias": jnp.array([0.0, 5.0])},
                                 "dense0_ln": {"scale": jnp.array([2.0, 2.0]), "bias": jnp.array([1.0, -1.0])}},
                       "head": {"kernel": jnp.array([[9.0]]), "bias": jnp.array([9.0])}}}
  theta_0 = {"params": {"torso": {"dense0": {"kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "bias": jnp.zeros(2)},
                                  "dense0_ln": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}},
                        "head": {"kernel": jnp.array([[1.0]]), "bias": jnp.zeros(1)}}}
  projected = remedies.nap_project(params, theta_0)["params"]
  np.testing.assert_allclose(projected["torso"]["dense0"]["kernel"], np.array([[3.0, 0.0], [0.0, 4.0]]) / np.sqrt(2))
  np.testing.assert_allclose(projected["torso"]["dense0"]["bias"], np.array([0.0, 5.0]) / np.sqrt(2))
  np.testing.assert_allclose(projected["torso"]["dense0_ln"]["scale"], [2.0 * np.sqrt(2 / 10)] * 2, rtol=1e-6)
  np.testing.assert_allclose(projected["torso"]["dense0_ln"]["bias"], np.array([1.0, -1.0]) * np.sqrt(2 / 10), rtol=1e-6)
  assert float(projected["head"]["kernel"][0, 0]) == 9.0 and float(projected["head"]["bias"][0]) == 9.0
  with pytest.raises(ConfigError, match="nap=True needs layer_norm=True"):
    DQNConfig(**MLP, nap=True)


def test_optimizer_reset_zeroes_moments_and_counts_but_keeps_the_l2_init_anchor():
  config = DQNConfig(**MLP, optimizer="adam", l2_init=1e-2, optimizer_reset_period_updates=3)
  learner, state, batch = _trained(config, steps=3)
  anchor = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, remedies.L2InitState))
            if isinstance(s, remedies.L2InitState)][0]
  params = _flat(state.params)
  state, events = learner.apply_remedies(state, batch, 2)
  assert events[0].remedy == "optimizer_reset"
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)][0]
  assert int(adam.count) == 0 and not any(np.asarray(x).any() for x in jax.tree.leaves((adam.mu, adam.nu)))
  kept = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, remedies.L2InitState))
          if isinstance(s, remedies.L2InitState)][0]
  for a, b in zip(jax.tree.leaves(anchor), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(a, b)
  assert all(np.array_equal(v, params[k]) for k, v in _flat(state.params).items())  # parameters untouched


# -- CReLU, spectral normalisation -----------------------------------------------------------------------------


def test_crelu_concatenates_both_signs_and_doubles_the_width():
  learner = DQNLearner(DQNConfig(torso="mlp", mlp_hidden_sizes=(5,), activation="crelu"), NUM_ACTIONS)
  obs = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  params = learner.network.init(jax.random.PRNGKey(0), obs)
  w, b = (np.asarray(params["params"]["torso"]["dense0"][k]) for k in ("kernel", "bias"))
  x = np.asarray(obs) @ w + b
  features = learner.network.apply(params, obs, method=learner.network.features)
  np.testing.assert_allclose(features, np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1), rtol=1e-5, atol=1e-6)
  assert params["params"]["head"]["kernel"].shape == (10, NUM_ACTIONS)


def test_deep_fourier_features_concatenate_sine_and_cosine_at_every_hidden_layer():
  # Lewandowski et al. 2025: concat(sin z, cos z) of the same pre-activation, every hidden layer; the head linear.
  learner = DQNLearner(DQNConfig(torso="mlp", mlp_hidden_sizes=(5, 4), activation="fourier"), NUM_ACTIONS)
  obs = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  params = learner.network.init(jax.random.PRNGKey(0), obs)
  torso = params["params"]["torso"]
  x = np.asarray(obs, np.float64)
  for layer in ("dense0", "dense1"):  # by hand in numpy: each layer reads the doubled outputs of the one before
    z = x @ np.asarray(torso[layer]["kernel"], np.float64) + np.asarray(torso[layer]["bias"], np.float64)
    x = np.concatenate([np.sin(z), np.cos(z)], axis=-1)
  features = learner.network.apply(params, obs, method=learner.network.features)
  np.testing.assert_allclose(features, x, rtol=1e-5, atol=1e-6)
  assert torso["dense1"]["kernel"].shape == (10, 4) and params["params"]["head"]["kernel"].shape == (8, NUM_ACTIONS)
  q = learner.network.apply(params, obs).q_values  # the head stays linear
  head = params["params"]["head"]
  np.testing.assert_allclose(q, x @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), rtol=1e-5, atol=1e-5)
  # The probes read the layer's outputs the same way (networks/activations.py), and score |sin|, |cos| units.
  from networks.activations import hidden_preactivations, penultimate_features
  preactivations = hidden_preactivations(learner.network, params, obs)
  np.testing.assert_allclose(penultimate_features(preactivations, "fourier"), features, rtol=1e-6)
  # Nature CNN: the doubled fan-ins of Plasticine's DFF network (c51_atari_base.py:79-90, :137-138 at aa00b4b).
  nature = DQNLearner(DQNConfig(activation="fourier"), NUM_ACTIONS).network
  shapes = jax.tree.map(np.shape, nature.init(jax.random.PRNGKey(0), jnp.zeros((1, 84, 84, 4), jnp.uint8)))["params"]
  assert [shapes["torso"][n]["kernel"][-2:] for n in ("conv0", "conv1", "conv2", "dense0")] == [
      (4, 32), (64, 64), (128, 64), (6272, 512)]
  assert shapes["head"]["kernel"] == (1024, NUM_ACTIONS)
  with pytest.raises(ConfigError, match="redo_period_updates needs ReLU units"):
    DQNConfig(activation="fourier", redo_period_updates=10)


@pytest.mark.parametrize("head", ["dense", "output"])
def test_plasticity_injection_keeps_the_q_values_freezes_the_old_head_and_trains_as_many_parameters(head):
  # Nikishin et al. 2023: at injection Q = h_sg(theta)(e) + h_theta'(e) - h_sg(theta'_0)(e), theta'_0 = theta' fresh;
  # the head h is the last hidden layer and the output layer (dense, on the layers below) or the output layer alone.
  config = DQNConfig(**MLP, optimizer="adam", plasticity_injection_update=3, plasticity_injection_head=head)
  learner = DQNLearner(config, NUM_ACTIONS)
  batch = _batch(jax.random.PRNGKey(1))
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  q = lambda params: np.asarray(learner.network.apply(params, batch.obs_tm1).q_values)  # noqa: E731

  def grads_of(params, target_params):
    grads = jax.grad(lambda p: learner.loss(p, target_params, batch, jax.random.PRNGKey(2))[0])(params)
    return traverse_util.flatten_dict(grads["params"])

  def trained(params):
    """{layer: number of parameters in the arrays with a non-zero TD-loss gradient} (what an update moves)."""
    counts = {}
    for path, g in grads_of(params, state.target_params).items():
      layer = "/".join(path[:2]) if path[0] == "torso" else path[0]
      counts[layer] = counts.get(layer, 0) + (int(np.size(g)) if np.any(np.asarray(g)) else 0)
    return {k: v for k, v in counts.items() if v}

  before = trained(state.params)
  assert set(before) == {"torso/dense0", "torso/dense1", "head"}
  own = ["head"] + (["torso/dense1"] if head == "dense" else [])  # the layers the injected head stands for
  events = []
  for _ in range(5):
    step_before = int(state.step)
    state, _ = learner.update(state, batch)
    q_before_event, state_before_event = q(state.params), state
    state, new = learner.apply_remedies(state, batch, step_before)
    events += [(e.step, e.remedy) for e in new]
    if new:
      np.testing.assert_allclose(q(state.params), q_before_event, rtol=1e-6, atol=1e-6)  # nothing changes
      # The layers below the head still learn through the own head: at injection (theta' = theta'_0) their gradient
      # is unchanged.
      below = [{p: g for p, g in grads_of(s.params, s.target_params).items()
                if p[0] == "torso" and "/".join(p[:2]) not in own} for s in (state_before_event, state)]
      assert below[0] and below[0].keys() == below[1].keys()
      for path in below[0]:
        np.testing.assert_allclose(below[1][path], below[0][path], rtol=1e-5, atol=1e-7, err_msg=str(path))
      injected = state
  assert events == [(3, "plasticity_injection")]
  flat = _flat(injected.params)
  injected_leaves = [p for p in flat if p.startswith("params/injected_head/")]
  assert len(injected_leaves) == (4 if head == "dense" else 2)  # dense0 and out, or out: kernel and bias each
  for path in injected_leaves:  # the trained copy and the frozen one start equal, and the target has both
    frozen = path.replace("injected_head/", "injected_head_frozen/")
    np.testing.assert_array_equal(flat[path], flat[frozen])
    np.testing.assert_array_equal(_flat(injected.target_params)[path], flat[path])
  after = trained(injected.params)
  assert set(after) == set(before) - set(own) | {"injected_head"}
  assert after["injected_head"] == sum(before[layer] for layer in own)  # as many
  assert sum(after.values()) == sum(before.values())
  now = _flat(state.params)  # two more updates since: the own head and the frozen copy did not move
  kept = ["params/head/kernel", "params/injected_head_frozen/out/kernel", "injection/active"]
  for path in kept + (["params/torso/dense1/kernel"] if head == "dense" else []):
    np.testing.assert_array_equal(now[path], flat[path])
  assert not np.array_equal(now["params/injected_head/out/kernel"], flat["params/injected_head/out/kernel"])
  assert not np.array_equal(now["params/torso/dense0/kernel"], flat["params/torso/dense0/kernel"])


def test_injecting_a_linear_output_layer_alone_predicts_as_not_injecting_under_sgd():
  # Why the dense head is the default: h_sg(theta)(f) + h_theta'(f) - h_sg(theta'_0)(f) = f (theta + theta' - theta'_0)
  # for a linear head, and theta' takes theta's gradient, so SGD moves the predictions exactly as without injection.
  batch = _batch(jax.random.PRNGKey(1))

  def q_after_sgd(injection_update: int, head: str = "dense"):
    config = DQNConfig(**MLP, plasticity_injection_update=injection_update, plasticity_injection_head=head)
    learner = DQNLearner(config, NUM_ACTIONS)
    state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
    params, target_params, rng = state.params, state.target_params, jax.random.PRNGKey(3)
    loss = jax.jit(lambda p, t: learner.loss(p, t, batch, jax.random.PRNGKey(2))[0])
    for step in range(1, 7):
      grads = jax.grad(loss)(params, target_params)
      params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)  # SGD (the injection flag has no gradient)
      applied = learner.remedies.apply(params, state.opt_state, rng, step - 1, step, batch.obs_tm1, target_params)
      params, target_params, rng = applied.params, applied.target_params, applied.rng
    return np.asarray(learner.network.apply(params, batch.obs_tm1).q_values)

  plain = q_after_sgd(0)
  np.testing.assert_allclose(q_after_sgd(2, "output"), plain, rtol=1e-4, atol=1e-5)
  assert np.abs(q_after_sgd(2, "dense") - plain).max() > 1e-3


def test_spectral_norm_divides_by_the_largest_singular_value():
  layer = SNDense(7)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 11))
  variables = layer.init(jax.random.PRNGKey(0), x)
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  u = variables[SPECTRAL_NORM]["u"]
  for _ in range(200):  # the learner's one step per update, many updates
    u, _ = power_step(variables["params"]["kernel"], u)
  variables = {**variables, SPECTRAL_NORM: {"u": u}}
  top = np.linalg.svd(kernel, compute_uv=False)[0]
  expected = np.asarray(x) @ (kernel / top) + np.asarray(variables["params"]["bias"])
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-4, atol=1e-5)
  grads = jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 2))(variables)
  assert np.abs(grads["params"]["kernel"]).sum() > 0 and not np.asarray(grads[SPECTRAL_NORM]["u"]).any()


def test_spectral_norm_vectors_advance_one_power_step_per_update_and_ignore_the_optimizer():
  config = DQNConfig(**MLP, spectral_norm_layers=("dense1",), weight_decay=0.5, l2_init=0.1)
  learner, state, batch = _trained(config, steps=0)
  u0 = state.params[SPECTRAL_NORM]["torso"]["dense1"]["u"]
  new, _ = learner.update(state, batch)
  expected, _ = power_step(new.params["params"]["torso"]["dense1"]["kernel"], u0)
  np.testing.assert_allclose(new.params[SPECTRAL_NORM]["torso"]["dense1"]["u"], expected, rtol=1e-5, atol=1e-7)


def test_spectral_norm_of_an_unknown_layer_names_the_layers():
  with pytest.raises(ConfigError, match=r"\['dense9'\].*its layers are dense0, dense1"):
    _trained(DQNConfig(**MLP, spectral_norm_layers=("dense9",)), steps=0)


# -- validation, composition, resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    (dict(reset_layers="last:0"), "reset_layers='last:0'"),
    (dict(shrink_perturb_layers="encoder"), "shrink_perturb_layers='encoder'"),
    (dict(activation="gelu"), "activation"),
    (dict(reset_period_updates=-1), "reset_period_updates"),
    (dict(redo_period_updates=6, updates_per_call=4), "multiple of updates_per_call"),
    (dict(redo_period_updates=10, torso="impala"), "chain torso"),
    (dict(soft_shrink_perturb=1.5), "soft_shrink_perturb"),
    (dict(soft_shrink_perturb_toward="zero"), "soft_shrink_perturb_toward"), (dict(l2_init_form="l1"), "l2_init_form"),
    (dict(parseval=-1.0), "parseval"), (dict(parseval_scale=-2.0), "parseval_scale"),
    (dict(parseval_layers="middle"), "parseval_layers"),
    (dict(l2_init=float("nan")), "l2_init"),
])
def test_remedy_fields_are_validated(fields, message):
  with pytest.raises(ConfigError, match=message):
    DQNConfig(**fields)


PERIODIC = dict(reset_period_updates=2, shrink_perturb_period_updates=2, optimizer_reset_period_updates=2)


@pytest.mark.parametrize("remedies_on,expected", [
    # ReLU-family: CReLU with ReDo, and every per-update remedy.
    (dict(activation="crelu", redo_period_updates=2, weight_decay=0.1, soft_shrink_perturb=1e-3, l2_init=1e-3,
          parseval=1e-3, nap=True, trac=True),
     [(s, r) for s in (2, 4) for r in ("reset", "shrink_perturb", "redo", "optimizer_reset")]),
    # Plasticine's: deep Fourier features (ReDo needs ReLUs: not here), injection, its soft shrink-and-perturb and
    # L2-init forms, Parseval, NaP, TRAC.
    (dict(activation="fourier", soft_shrink_perturb=1e-3, soft_shrink_perturb_toward="initial", l2_init=1e-3,
          l2_init_form="norm", parseval=1e-3, nap=True, trac=True, plasticity_injection_update=3),
     [(2, "reset"), (2, "shrink_perturb"), (2, "optimizer_reset"), (3, "plasticity_injection"),
      (4, "reset"), (4, "shrink_perturb"), (4, "optimizer_reset")]),
])
def test_every_remedy_at_once_with_layer_norm_and_two_hot_keeps_training(remedies_on, expected):
  config = DQNConfig(**MLP, layer_norm=True, head="two_hot", num_bins=11, spectral_norm_layers=("dense0",), **PERIODIC,
                     **remedies_on)
  learner, state, batch = _trained(config, steps=0)
  seen = []
  for _ in range(4):
    before = int(state.step)
    state, metrics = learner.update(state, batch)
    state, events = learner.apply_remedies(state, batch, before)
    seen += [(e.step, e.remedy) for e in events]
    assert np.isfinite(float(metrics["loss"]))
  assert seen == expected
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


@pytest.mark.parametrize("kept", [dict(l2_init=1e-2), dict(soft_shrink_perturb=0.05, soft_shrink_perturb_toward="initial"),
                                  dict(plasticity_injection_update=2, nap=True, layer_norm=True, trac=True)])
def test_schedule_and_draws_survive_a_checkpoint_on_disk(tmp_path, kept):
  # theta_0 (the l2_init anchor, the soft pull's target, NaP's norms, TRAC's reference) and the injected heads and
  # flag come back from disk, not from the template's own init.
  config = DQNConfig(**MLP, reset_period_updates=3, redo_period_updates=3, **kept)
  learner, state, batch = _trained(config, steps=0)

  def run(state, updates):
    events = []
    for _ in range(updates):
      before = int(state.step)
      state, _ = learner.update(state, batch)
      state, new = learner.apply_remedies(state, batch, before)
      events += [(e.step, e.remedy) for e in new]
    return state, events

  straight, straight_events = run(state, 6)
  half, first = run(state, 2)
  with CheckpointStore(str(tmp_path / "ckpt")) as store:
    store.save(2, half, {})
  fresh_learner_state = learner.init(jax.random.PRNGKey(42), batch.obs_tm1)  # a template, other values
  with CheckpointStore(str(tmp_path / "ckpt"), read_only=True) as store:
    restored, _, step = store.restore(fresh_learner_state)
  assert step == 2
  resumed, second = run(restored, 4)
  injection = [(2, "plasticity_injection")] if "plasticity_injection_update" in kept else []
  assert first + second == straight_events == injection + [(3, "reset"), (3, "redo"), (6, "reset"), (6, "redo")]
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# -- probes around remedy events --------------------------------------------------------------------------------


def test_checkpoints_around_remedy_events_are_scheduled_kept_and_eligible():
  from training.config import PRESETS, around_remedy, checkpoint_keep_fn, remedy_probe_steps
  from training.checkpoint_schedule import next_checkpoint_step

  base = PRESETS["smoke"]
  agent = dataclasses.replace(base.agent, reset_period_updates=40, redo_period_updates=100, updates_per_call=2)
  config = dataclasses.replace(base, agent=agent, probe_every_updates=1000, checkpoint_every_updates=500,
                               probe_around_remedies=True)
  assert remedy_probe_steps(config, 0) == (40, 42) and remedy_probe_steps(config, 40) == (80, 42)
  assert remedy_probe_steps(config, 42) == (80, 82)
  assert [s for s in range(1, 210) if around_remedy(config, s)] == [40, 42, 80, 82, 100, 102, 120, 122, 160, 162,
                                                                     200, 202]
  keep = checkpoint_keep_fn(config)
  assert keep(1000) and keep(82) and keep(500) and not keep(530) and not keep(84)
  assert next_checkpoint_step(config, 40) == 42 and next_checkpoint_step(config, 42) == 82
  assert next_checkpoint_step(dataclasses.replace(config, probe_around_remedies=False), 40) == 500
  with pytest.raises(ConfigError, match="probe_around_remedies needs"):
    dataclasses.replace(base, probe_around_remedies=True, agent=dataclasses.replace(base.agent))


# A real run that keeps and probes the checkpoints around its resets: tests/test_continual.py
# (test_probes_around_resets_and_at_task_switches_are_checkpointed_kept_and_probed), one run for both schedules.
