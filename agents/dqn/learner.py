"""Double DQN learner: `TrainState` and one jitted `update(state, batch) -> (state, metrics)`.

With `updates_per_call = K > 1`, every array in the batch has a leading [K] axis
and the K updates run inside one jitted call (saves K-1 Python dispatches and
host syncs; useful for small batches). That is a `lax.scan`, except for
convolutional torsos on XLA:CPU, where the K updates are unrolled instead:
convolutions inside an XLA loop body run about 9x slower there (measured here: 2.8 vs 26 Nature-CNN updates/s
at batch 32; jax-ml/jax#12868). Scalar metrics are means over the K updates;
`abs_td_error` keeps its [K, B] shape for priority updates.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from agents.dqn import augmentation, losses, remedies
from agents.dqn.config import OPTIMIZER_DEFAULTS, DQNConfig
from agents.dqn.trac import trac
from agents.dqn.transition import Transition
from common.validation import ConfigError
from networks import QNetwork, is_layer_norm_path
from networks.spectral_norm import SPECTRAL_NORM
from networks.torsos import to_float


class TrainState(NamedTuple):
  params: chex.ArrayTree
  target_params: chex.ArrayTree
  opt_state: optax.OptState
  step: chex.Array  # int32[], learner updates done
  rng: chex.PRNGKey


def weight_decay_mask(params: chex.ArrayTree, decay_layer_norm_params: bool) -> chex.ArrayTree:
  """True for every parameter weight decay applies to."""
  flat = traverse_util.flatten_dict(params)
  mask = {path: decay_layer_norm_params or not is_layer_norm_path(path) for path in flat}
  return traverse_util.unflatten_dict(mask)


def make_optimizer(config: DQNConfig) -> optax.GradientTransformation:
  """[l2_init, or theta_0 kept] [parseval] [l2] -> [clip] -> RMSProp/Adam -> [decoupled weight decay] -> -lr [in TRAC].

  The penalties (l2_init, Parseval, and weight decay in its l2 form) add their gradients to the loss's, before any
  scaling.
  """
  decay_mask = None if config.decay_layer_norm_params else (
      lambda params: weight_decay_mask(params, decay_layer_norm_params=False))
  decays = config.weight_decay > 0.0
  parts = []
  if config.l2_init > 0.0:
    parts.append(remedies.l2_init(config.l2_init, config.l2_init_form))
  elif config.nap or (config.soft_shrink_perturb > 0.0 and config.soft_shrink_perturb_toward == "initial"):
    parts.append(remedies.keep_initial_params())  # theta_0: the norms NaP keeps, the target of the soft pull
  if config.parseval > 0.0:
    parts.append(remedies.parseval(config.parseval, config.parseval_scale, config.parseval_layers))
  if decays and config.weight_decay_form == "l2":
    parts.append(optax.add_decayed_weights(2.0 * config.weight_decay, decay_mask))  # d/dw of wd * ||w||^2
  if config.max_grad_norm is not None:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  eps = config.resolved_optimizer_eps
  if config.optimizer == "rmsprop":
    # Centred RMSProp, as DQN Zoo's `optax.rmsprop(..., centered=True)`.
    parts.append(optax.scale_by_stddev(decay=OPTIMIZER_DEFAULTS["rmsprop"]["decay"], eps=eps))
  else:
    parts.append(optax.scale_by_adam(eps=eps))
  if decays and config.weight_decay_form == "decoupled":
    parts.append(optax.add_decayed_weights(config.weight_decay, decay_mask))
  parts.append(optax.scale_by_learning_rate(config.resolved_learning_rate))
  return trac(optax.chain(*parts)) if config.trac else optax.chain(*parts)


class DQNLearner:
  """Holds the network, the optimizer and the jitted update for one `DQNConfig`."""

  def __init__(self, config: DQNConfig, num_actions: int):
    self.config = config
    self.num_actions = num_actions
    self.network: QNetwork = config.make_network(num_actions)
    self.optimizer = make_optimizer(config)
    self.remedies = remedies.Remedies(config, self.network, self.optimizer)
    self._unroll_updates = jax.default_backend() == "cpu" and config.torso != "mlp"
    self.augments = config.random_shift_pad > 0 or config.intensity_scale > 0.0
    self.update = jax.jit(self._update_k if config.updates_per_call > 1 else self._update_one)

  def init(self, rng: chex.PRNGKey, obs_example: chex.Array) -> TrainState:
    """A fresh TrainState; `obs_example` is one batch of observations (for shapes)."""
    if self.augments and jnp.ndim(obs_example) != 4:
      raise ConfigError(f"random_shift_pad/intensity_scale augment images [B, H, W, C]; these observations have "
                        f"shape {jnp.shape(obs_example)}")
    init_rng, state_rng = jax.random.split(rng)
    params = self.network.init(init_rng, obs_example)
    self._check_spectral_norm_layers(params)
    if self.config.remedy_periods:
      remedies.select_layers(params, self.config.reset_layers)  # a last:K too long for this network fails here
      remedies.select_layers(params, self.config.shrink_perturb_layers)
    return TrainState(
        params=params,
        target_params=params,
        opt_state=self.optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=state_rng,
    )

  def _check_spectral_norm_layers(self, params) -> None:
    wanted = set(self.config.spectral_norm_layers)
    found = set(params.get(SPECTRAL_NORM, {}).get("torso", {}))
    if wanted - found:
      layers = [name for name in params["params"]["torso"] if not is_layer_norm_path((name,))]
      raise ConfigError(f"spectral_norm_layers names {sorted(wanted - found)}, which this {self.config.torso} torso "
                        f"does not have; its layers are {', '.join(layers)}")

  def augment(self, rng: chex.PRNGKey, batch: Transition) -> Transition:
    """DrQ augmentation of obs_tm1 and obs_t with independent draws (Dopamine's `_training_step_update`,
    dopamine/labs/atari_100k/atari_100k_rainbow_agent.py:181-185); observations become float32 in [0, 1]."""
    config = self.config
    key_tm1, key_t = jax.random.split(rng)
    augment = lambda key, obs: augmentation.drq_augment(key, to_float(obs), config.random_shift_pad, config.intensity_scale)
    return batch._replace(obs_tm1=augment(key_tm1, batch.obs_tm1), obs_t=augment(key_t, batch.obs_t))

  def loss(self, params, target_params, batch: Transition, rng: Optional[chex.PRNGKey] = None):
    """Mean (importance-weighted) loss over the batch, and per-example diagnostics.

    With `rng` and augmentation configured, the batch is augmented first; without `rng` (the probes) it is not.
    `target_params` None: the target network is the online one.
    """
    config = self.config
    if rng is not None and self.augments:
      batch = self.augment(rng, batch)
    out_tm1 = self.network.apply(params, batch.obs_tm1)
    q_t_selector = jax.lax.stop_gradient(self.network.apply(params, batch.obs_t).q_values)
    if target_params is None:  # the target network is the online network: one forward pass saved
      q_t_value = q_t_selector
    else:
      q_t_value = self.network.apply(target_params, batch.obs_t).q_values
    a_tm1 = batch.a_tm1.astype(jnp.int32)
    if config.head == "scalar":
      per_example, td_error = jax.vmap(
          lambda *args: losses.scalar_double_q_loss(
              *args, loss=config.loss, huber_delta=config.huber_delta, td_error_grad_clip=config.td_error_grad_clip)
      )(out_tm1.q_values, a_tm1, batch.r_t, batch.discount_t, q_t_value, q_t_selector)
    else:
      per_example, td_error = jax.vmap(
          lambda *args: losses.two_hot_double_q_loss(
              *args,
              value_min=config.value_min,
              value_max=config.value_max,
              value_transform=config.value_transform,
              transform_eps=config.transform_eps,
          )
      )(out_tm1.logits, out_tm1.q_values, a_tm1, batch.r_t, batch.discount_t, q_t_value, q_t_selector)
    weight = jnp.ones_like(per_example) if batch.weight is None else batch.weight
    loss = jnp.mean(weight * per_example)
    return loss, (out_tm1.q_values, td_error)

  def _update_one(self, state: TrainState, batch: Transition):
    rng, augment_rng = jax.random.split(state.rng)
    # Period 1 copies the online parameters into the target after every update, so at every update the target
    # network *is* the online network (DrQ(epsilon)), and s_t needs one forward pass, not two.
    target_params = None if self.config.target_update_period_updates == 1 else state.target_params
    (loss, (q_tm1, td_error)), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, target_params, batch, augment_rng)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = self.remedies.after_update(params, state.params, jax.random.fold_in(augment_rng, 1), batch.obs_tm1,
                                        opt_state)
    step = state.step + 1
    target_params = optax.periodic_update(params, state.target_params, step, self.config.target_update_period_updates)
    metrics = {
        "loss": loss,
        "q_mean": jnp.mean(q_tm1),
        "q_max": jnp.max(q_tm1),
        "td_error_mean": jnp.mean(td_error),
        "td_error_abs_mean": jnp.mean(jnp.abs(td_error)),
        "td_error_std": jnp.std(td_error),
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
        "abs_td_error": jnp.abs(td_error),
    }
    return TrainState(params, target_params, opt_state, step, rng), metrics

  def _update_k(self, state: TrainState, batch: Transition):
    if self._unroll_updates:
      steps = []
      for k in range(self.config.updates_per_call):
        state, metrics = self._update_one(state, jax.tree.map(lambda x: x[k], batch))
        steps.append(metrics)
      metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *steps)
    else:
      state, metrics = jax.lax.scan(self._update_one, state, batch)
    return state, {k: v if k == "abs_td_error" else jnp.mean(v) for k, v in metrics.items()}

  # -- periodic remedies (agents/dqn/remedies.py) ------------------------------------------------------------

  def apply_remedies(self, state: TrainState, batch: Transition, step_before: int, step: Optional[int] = None
                     ) -> tuple[TrainState, list[remedies.RemedyEvent]]:
    """Runs every periodic remedy due since update `step_before` (a multiple of its period in
    (step_before, step]); returns the new state and one event per remedy applied. `step`: the update count now,
    as the caller counts it (the learner loop: no read from the device); None reads `state.step`.

    Runs eagerly between jitted updates (events are rare). The fresh initialisations come from the state's
    RNG, so a resumed run draws what an uninterrupted one would. The target network's touched parameters are
    set to the online network's new values.
    """
    obs = batch.obs_tm1 if jnp.ndim(batch.a_tm1) == 1 else batch.obs_tm1[-1]  # [K, B, ...] -> the last [B, ...]
    step = int(state.step) if step is None else step
    applied = self.remedies.apply(state.params, state.opt_state, state.rng, step_before, step, obs,
                                  target_params=state.target_params)
    state = state._replace(params=applied.params, target_params=applied.target_params, opt_state=applied.opt_state,
                           rng=applied.rng)
    return state, applied.events
