"""The pure pieces of bench/plasticity_study.py: inputs, networks, training step, summaries (no Atari, seconds)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bench import plasticity_study as study
from networks import is_layer_norm_path

ARGS = study.Args(num_obs=16, batch_size=4, mlp_hidden_sizes=(8, 8), num_bins=11)
OBS = study.standardize(np.random.default_rng(0).integers(0, 256, (16, 42, 42, 1), dtype=np.uint8))


def test_newest_frame_is_mean_pooled_2x2():
  obs = np.zeros((2, 84, 84, 4), np.uint8)
  obs[0, :2, :2, 3] = [[10, 20], [30, 41]]  # mean 25.25 -> 25
  obs[0, :2, :2, 0] = 200  # an older frame: ignored
  obs[1, 82:, 82:, 3] = 255
  pooled = study.newest_frame_pooled(obs)
  assert pooled.shape == (2, 42, 42, 1) and pooled.dtype == np.uint8
  assert pooled[0, 0, 0, 0] == 25 and pooled[0].sum() == 25
  assert pooled[1, 41, 41, 0] == 255 and pooled[1].sum() == 255


def test_first_unique_keeps_first_occurrences_in_order():
  frames = np.array([3, 1, 3, 2, 1, 4], np.uint8).reshape(6, 1, 1, 1)
  np.testing.assert_array_equal(study.first_unique(frames), [0, 1, 3, 5])


def test_standardize_centres_each_pixel_and_scales_the_residual_to_unit_std():
  frames = np.random.default_rng(1).integers(0, 256, (10, 4, 4, 1)).astype(np.uint8)
  frames[:, 0, 0, 0] = 7  # a pixel that never changes
  x = study.standardize(frames)
  assert x.dtype == np.float32
  np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(), 1.0, rtol=1e-5)
  assert np.all(x[:, 0, 0, 0] == 0.0)
  residual = frames.astype(np.float64) - frames.mean(axis=0)
  np.testing.assert_allclose(x, residual / residual.std(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_tasks,every,expected", [(10, 3, [0, 1, 4, 7, 10]), (4, 1, [0, 1, 2, 3, 4]),
                                                      (1, 5, [0, 1]), (5, 3, [0, 1, 4, 5])])
def test_probe_indices_always_include_init_first_and_last(num_tasks, every, expected):
  assert study.probe_indices(num_tasks, every) == expected


def test_summary_change_and_ratio_are_per_seed_then_averaged():
  probe_loss = np.array([[0.5, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.3]])  # 2 seeds x probes at [0, 1, 2, 3]
  task_fit = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
  s = study.summarize(probe_loss, task_fit, [0, 1, 2, 3])
  assert s["probe_first"]["mean"] == pytest.approx(0.15) and s["probe_last"]["mean"] == pytest.approx(0.35)
  assert s["probe_change"]["mean"] == pytest.approx(0.2) and s["probe_change"]["std"] == pytest.approx(0.0)
  assert s["probe_ratio"]["mean"] == pytest.approx((2.0 + 3.0) / 2) and s["probe_ratio"]["std"] == pytest.approx(0.5)
  assert s["task_fit_first"]["mean"] == pytest.approx(0.2) and s["task_fit_last"]["mean"] == pytest.approx(0.2)
  assert s["probe_init"]["n"] == 2
  assert study.format_number(s["probe_ratio"], 2) == "2.50 ± 0.50"


@pytest.mark.parametrize("network", study.NETWORKS)
@pytest.mark.parametrize("variant", study.VARIANTS)
def test_networks_have_one_value_output_and_layer_norm_before_each_relu(network, variant):
  net = study.make_network(ARGS, network, variant)
  params = net.init(jax.random.PRNGKey(0), OBS[:1])
  out = net.apply(params, OBS)
  assert out.q_values.shape == (16, 1)
  if variant == "two_hot":
    assert out.logits.shape == (16, 1, ARGS.num_bins)
    assert np.all(np.abs(np.asarray(out.q_values)) <= ARGS.value_max + 1e-5)
  config = study.variant_config(ARGS, network, variant)  # both networks take the variant's injection as it is
  assert (net.plasticity_injection, net.injection_head) == (config.plasticity_injection_update > 0,
                                                            config.plasticity_injection_head)
  norms = {path[1] for path in traverse_util.flatten_dict(params["params"]) if is_layer_norm_path(path)}
  expected = {"mlp": {"dense0_ln", "dense1_ln"}, "cnn": {"conv0_ln", "conv1_ln", "dense0_ln"}}[network]
  assert norms == (expected if "layer_norm" in variant or variant == "nap" else set())


def test_weight_decay_variants_shrink_weights_decoupled_from_adam():
  params = {"w": jnp.full((3,), 2.0)}
  zero_grads = {"w": jnp.zeros(3)}
  for variant, expected in (("none", 0.0), ("layer_norm+weight_decay", -ARGS.learning_rate * ARGS.weight_decay * 2.0)):
    optimizer = study.make_variant_optimizer(ARGS, variant)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)


def test_task_targets_are_a_deterministic_sine_in_minus_one_one():
  key = jax.random.PRNGKey(3)
  y = study.task_targets(key, OBS)
  assert y.shape == (16,) and np.all(np.abs(np.asarray(y)) <= 1.0)
  np.testing.assert_array_equal(y, study.task_targets(key, OBS))
  assert not np.allclose(y, study.task_targets(jax.random.PRNGKey(4), OBS))


def test_a_task_offset_shifts_every_target_of_a_task_by_one_constant_within_its_bound():
  key = jax.random.PRNGKey(3)
  plain = np.asarray(study.task_targets(key, OBS))
  shifted = np.asarray(study.task_targets(key, OBS, offset_max=8.0))
  offsets = shifted - plain
  np.testing.assert_allclose(offsets, offsets[0], atol=1e-5)  # one a_t for every input of the task
  assert 0.5 < abs(offsets[0]) <= 8.0  # (this key draws one well away from 0)
  other = np.asarray(study.task_targets(jax.random.PRNGKey(4), OBS, offset_max=8.0)) - np.asarray(
      study.task_targets(jax.random.PRNGKey(4), OBS))
  assert abs(other[0] - offsets[0]) > 1e-3  # a new draw per task
  with pytest.raises(SystemExit, match="task-offset-max"):
    study.Args(task_offset_max=2.0, value_max=2.0)  # targets up to 3 would leave the two-hot support


@pytest.mark.parametrize("variant", ["none", "two_hot"])
def test_training_lowers_the_task_mse_and_unrolled_steps_equal_the_scan(variant):
  args = dataclasses.replace(ARGS, learning_rate=3e-3)
  net = study.make_network(args, "mlp", variant)
  optimizer = study.make_variant_optimizer(args, variant)
  params = net.init(jax.random.PRNGKey(0), OBS[:1])
  y = study.task_targets(jax.random.PRNGKey(1), OBS)
  key = jax.random.PRNGKey(2)
  scan = study.make_train_fn(net, optimizer, args, 60, unroll=False)
  p_scan, _, mse = scan(params, optimizer.init(params), OBS, y, key, jnp.int32(0))
  assert mse.shape == (60,) and float(mse[-10:].mean()) < 0.5 * float(mse[:10].mean())
  unrolled = study.make_train_fn(net, optimizer, args, 3, unroll=True)
  p_unroll, _, mse_unroll = unrolled(params, optimizer.init(params), OBS, y, key, jnp.int32(0))
  np.testing.assert_allclose(mse_unroll, mse[:3], rtol=1e-5)
  p_scan3, _, _ = study.make_train_fn(net, optimizer, args, 3, unroll=False)(params, optimizer.init(params), OBS, y, key,
                                                                            jnp.int32(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_unroll, p_scan3)


def test_markdown_table_has_a_row_per_network_and_variant():
  stats = {"mean": 0.25, "std": 0.05, "n": 2}
  summary = dict.fromkeys(("probe_init", "probe_first", "probe_last", "probe_change", "probe_ratio", "task_fit_first",
                           "task_fit_last"), stats)
  results = {"mlp": {"none": {"summary": summary}, "two_hot": {"summary": summary}},
             "cnn": {"none": {"summary": summary}}}
  table = study.markdown_table(results, ARGS)
  rows = [line for line in table.splitlines() if line.startswith("| mlp") or line.startswith("| cnn")]
  assert len(rows) == 3 and rows[0].startswith("| mlp | none | 0.250 ± 0.050")


def test_bad_arguments_exit_with_a_message():
  with pytest.raises(SystemExit, match="variants"):
    study.Args(variants=("dropout",))
  with pytest.raises(SystemExit, match="num-tasks"):
    study.Args(num_tasks=0)
