"""All plasticity probes of one checkpoint, as one `metrics/plasticity.jsonl` row.

`probe_checkpoint` is a function of the checkpoint's `TrainState`, the probe
inputs saved with it (replay transitions) and the previous probed checkpoint's
parameters; its randomness comes from (probe seed, step). The statistics
themselves live in their own modules, each citing its source:
- `target_fit`: Lyle et al. 2023's target-fitting probe (sec. 2.2), from the
  checkpoint and, for reference, from a fresh initialisation;
- `hessian`: the top eigenvalue of the TD-loss Hessian (and optionally its
  spectral density);
- `grad_cov`: normalised per-example TD-loss gradient inner products (Lyle et al.
  2023 eq. 3) with a heatmap;
- `stats`: srank (Kumar et al. 2021), effective rank (Roy & Vetterli 2007), tau-dormant units (Sokar et al. 2023;
  pooled over layers, and Plasticine's mean over layers as `<key>_layer_mean`), always-active ReLUs, pre-activation and feature statistics, weight norms,
  their change, effective learning rates of layers followed by LayerNorm.

Row keys: the headline numbers (`target_fit_final_loss`, `srank`, ...) plus
per-layer keys written `<metric>/<layer>` (e.g. `dormant_frac_tau_0/conv0`,
`param_norm/torso/dense0`), all plain floats and ints.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from agents.dqn.learner import DQNLearner, TrainState
from agents.dqn.transition import Transition
from plasticity import grad_cov, hessian, stats
from networks.activations import hidden_preactivations, layer_outputs, penultimate_features
from plasticity.config import ProbeConfig
from plasticity.target_fit import TargetFitConfig, target_fit_probe, target_fit_probe_fresh

DORMANT_TAUS = {"dormant_frac_tau_0": 0.0, "dormant_frac_tau_0025": 0.025}
# `<dormant key>_layer_mean`: the mean over layers of their dormant fractions (Plasticine's convention), beside the
# pooled fraction of the key itself (all hidden units of all layers together).
LAYER_MEAN_SUFFIX = "_layer_mean"


def probe_rng(config: ProbeConfig, step: int) -> jax.Array:
  """The probes' randomness for checkpoint `step`: the same online and offline."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), step)


# Every probe computes in full float32 precision, on every backend: JAX's default on recent NVIDIA GPUs is TF32
# for matmuls and convolutions (a 10-bit mantissa), and the target-fitting probe moves with one float32 ulp
# (plasticity/target_fit.py), so probes on a GPU would not be comparable with probes on a CPU, nor online with
# offline ones.
PROBE_PRECISION = "highest"


def probe_checkpoint(learner: DQNLearner, state: TrainState, inputs: dict, previous_params: Optional[Any],
                     config: ProbeConfig, *, step: int, heatmap_path: Optional[str] = None) -> dict:
  """Runs every probe on one checkpoint, in PROBE_PRECISION; returns the row (without step/env_steps)."""
  with jax.default_matmul_precision(PROBE_PRECISION):
    return _probe_checkpoint(learner, state, inputs, previous_params, config, step=step, heatmap_path=heatmap_path)


def _probe_checkpoint(learner: DQNLearner, state: TrainState, inputs: dict, previous_params: Optional[Any],
                      config: ProbeConfig, *, step: int, heatmap_path: Optional[str] = None) -> dict:
  fit_rng, fresh_rng, hessian_rng = jax.random.split(probe_rng(config, step), 3)
  batch = Transition(**{name: jnp.asarray(value) for name, value in inputs.items()})
  obs = batch.obs_tm1
  row: dict[str, Any] = {"probe_inputs": int(obs.shape[0])}

  # Target fitting (Lyle et al. 2023, sec. 2.2), with the agent's own optimizer.
  fit_config = TargetFitConfig(num_targets=config.num_targets, probe_steps=config.probe_steps,
                               batch_size=config.target_batch_size)
  fit = target_fit_probe(learner.network, learner.optimizer, state.params, obs, fit_rng, fit_config)
  row.update(_target_fit_keys("target_fit", fit))
  if config.fresh_reference:
    fresh = target_fit_probe_fresh(learner.network, learner.optimizer, obs, fresh_rng, fit_config)
    row.update(_target_fit_keys("target_fit_fresh", fresh))

  # Curvature of the TD loss on a probe batch.
  head = jax.tree.map(lambda x: x[:config.hessian_examples], batch)
  td_loss = lambda params, target_params, batch: learner.loss(params, target_params, batch)[0]
  td_args = (state.target_params, head)
  eigenvalue, _ = hessian.top_hessian_eigenvalue(td_loss, state.params, hessian_rng,
                                                 num_iterations=config.hessian_iterations, loss_args=td_args)
  row["hessian_max_eigenvalue"] = float(eigenvalue)
  if config.spectral_density:
    density = hessian.hessian_spectral_density(td_loss, state.params, hessian_rng, loss_args=td_args)
    row["hessian_density_nodes"] = density.nodes.tolist()  # [probes, lanczos steps]: plot with density_on_grid
    row["hessian_density_weights"] = density.weights.tolist()

  # Gradient covariance (Lyle et al. 2023 eq. 3) on per-example TD-loss gradients.
  examples = jax.tree.map(lambda x: x[:config.grad_cov_examples], batch)
  one_example_loss = lambda params, example: learner.loss(
      params, state.target_params, jax.tree.map(lambda x: x[None], example))[0]
  covariance = grad_cov.per_example_gradient_covariance(one_example_loss, state.params, examples)
  summary = grad_cov.covariance_summary(covariance)
  row["grad_cov_mean_offdiag"] = float(summary["mean_offdiag"])
  row["grad_cov_frac_negative"] = float(summary["frac_negative"])
  if heatmap_path:
    grad_cov.save_heatmap_png(np.asarray(covariance), heatmap_path, f"gradient covariance, step {step:,}")

  # Features and units.
  preactivations = hidden_preactivations(learner.network, state.params, obs)
  activation = learner.config.activation
  features = penultimate_features(preactivations, activation)
  row["srank"] = int(stats.srank(features))
  row["effective_rank"] = stats.effective_rank(features)
  row["feature_norm"] = float(stats.feature_norm(features))
  for key, tau in DORMANT_TAUS.items():
    row[key] = float(stats.network_dormant_fraction(preactivations, tau, activation))  # units pooled over layers
    row[key + LAYER_MEAN_SUFFIX] = stats.layer_mean_dormant_fraction(preactivations, tau, activation)  # Plasticine's
  relu = activation != "fourier"  # a linearized unit is a ReLU acting as the identity: none without ReLUs
  if relu:
    row["linearized_frac"] = float(stats.network_linearized_fraction(preactivations))
  for layer, values in preactivations.items():
    activations = layer_outputs(values, activation)
    for key, tau in DORMANT_TAUS.items():
      row[f"{key}/{layer}"] = float(stats.dormant_fraction(activations, tau))
    if relu:
      row[f"linearized_frac/{layer}"] = float(stats.linearized_fraction(values))
    for name, value in stats.preactivation_stats(values).items():
      row[f"preact_{name}/{layer}"] = float(value)
    if values.ndim == 2:
      row[f"srank/{layer}"] = int(stats.srank(activations))

  # Weights.
  norms = stats.param_norms(state.params)
  row["param_norm"] = float(norms.pop("total"))
  row.update({f"param_norm/{layer}": float(value) for layer, value in norms.items()})
  if previous_params is not None:
    changes = stats.param_change_norms(state.params, previous_params)
    row["param_change_norm"] = float(changes.pop("total"))
    row.update({f"param_change_norm/{layer}": float(value) for layer, value in changes.items()})
  learning_rate = learner.config.resolved_learning_rate
  row.update({f"effective_lr/{layer}": float(value)
              for layer, value in stats.effective_learning_rates(state.params, learning_rate).items()})
  return row


def _target_fit_keys(prefix: str, result) -> dict:
  return {
      f"{prefix}_final_loss": float(result.final_loss),
      f"{prefix}_auc": float(result.loss_auc),
      f"{prefix}_baseline": float(result.baseline),
      f"{prefix}_normalized_final_loss": float(result.normalized_final_loss),
  }
