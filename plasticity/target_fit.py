"""Target-fitting probe of plasticity (Lyle et al. 2023, "Understanding Plasticity in Neural Networks", sec. 2.2).

A network is plastic if, from its current parameters, it can still fit a new
function quickly. For each of `num_targets` random targets

    g_k(x) = a + sin(sin_scale * f(x; w0_k)),    float32[N, A]

where `w0_k` is a fresh initialisation of the same network (one rng per target)
and `a = mean_x f(x; params)` is the probed network's mean prediction per output
(float32[A]), the probe copies `params`, starts a fresh state of the agent's own
optimizer and regresses the network's value outputs onto g_k (MSE over inputs
and outputs) for `probe_steps` steps on minibatches of the inputs. The high
frequency sine makes g_k a hard, structure-free target whose mean matches what
the network already predicts, so the probe measures how well the network can
still move its outputs, not how far it has to move them.

Value outputs: `network.apply(params, obs)` may return an array float32[N, A]
or an object with `.q_values` (`networks.QOutput`). For the two-hot head the
q-values are h^-1 of the softmax mean over the support: a differentiable
function of the logits, so the same MSE applies to every head (the probe
measures how well the value output can move, whatever parameterises it). With
the identity transform the q-values are bounded by [value_min, value_max], and
`g` lies in [a - 1, a + 1], inside the default support of [-10, 10].

Randomness, fixed given `rng`: `target_rng, batch_rng = split(rng)`; target k
initialises `w0_k = network.init(split(target_rng, num_targets)[k], obs[:1])`
and draws its minibatch at step t from `fold_in(split(batch_rng, num_targets)[k], t)`
(uniform without replacement; all inputs, in order, when N <= batch_size).
At sin_scale 1e5 one float32 ulp of f(x; w0) moves the sine by ~0.01, so the
targets repeat exactly on one backend but differ slightly across backends.

Execution, chosen per backend and network (both overridable):
- networks without convolutions, or any network off CPU: one jitted call that
  vmaps over targets a `lax.scan` over all steps;
- convolutional networks on XLA:CPU: targets one after another, each a Python
  loop over jitted chunks of `chunk_steps` unrolled steps, because convolutions
  inside an XLA loop body run far slower there (jax-ml/jax#12868, see
  agents/dqn/learner.py), and a vmap over targets turns them into slower
  grouped convolutions.
Every mode runs the same steps on the same minibatches (equal up to float
rounding). Compiled code is cached per (network, optimizer, shapes): pass the
same optimizer object on every call to reuse it. Measured on this 2-core CPU
(shared, load ~10, so relative numbers only), N=64, 6 actions, Adam, second call
(compiled):
  MLP (64, 64), 16 inputs, 10 targets x 2,000 steps: vmap + scan 2.1 s,
    sequential scan 2.8 s, sequential unrolled chunks of 50 10.7 s.
  Nature CNN, 84x84x4, 2 targets x 4 steps: sequential unrolled 1.0 s,
    vmap + unrolled 2.5 s, sequential scan 25.4 s (26x slower); 10 targets x
    10 steps unrolled in chunks of 5: 36 s. At 3-8 steps/s the default
    10 x 2,000 steps take 40-110 min here: use fewer targets/steps on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.validation import check_in, check_int, check_range, check_finite_fields
from networks import categorical

FIT_LOSSES = ("mse", "cross_entropy")


@dataclasses.dataclass(frozen=True)
class TargetFitConfig:
  """Settings of the target-fitting probe (defaults: Lyle et al. 2023)."""

  num_targets: int = 10
  """Random target functions fitted, each from a copy of the probed parameters."""
  probe_steps: int = 2_000
  """Optimizer steps per target."""
  batch_size: int = 512
  """Inputs per step; all inputs (full batch) when there are at most this many."""
  sin_scale: float = 1e5
  """Frequency of the target: g(x) = a + sin(sin_scale * f(x; w0))."""
  loss: str = "mse"
  """What the probe minimises: mse, the value outputs' squared error (every head); or cross_entropy, for a two-hot
  head, the cross-entropy to the two-hot projection of h(g), the loss that head trains with. `final_loss` is the
  value outputs' MSE either way; `loss_curve` and `loss_auc` are of the loss minimised."""

  def __post_init__(self):
    check_finite_fields(self)
    check_in("loss", self.loss, FIT_LOSSES)
    check_int("num_targets", self.num_targets, low=1)
    check_int("probe_steps", self.probe_steps, low=1)
    check_int("batch_size", self.batch_size, low=1)
    check_range("sin_scale", self.sin_scale, low=0.0, low_inclusive=False)


class TargetFitResult(NamedTuple):
  final_loss: float  # mean over targets of the MSE over all inputs after the last step
  loss_auc: float  # mean over targets and steps of the training (minibatch) loss
  baseline: float  # mean over targets of the target variance: the MSE of predicting each output's mean
  normalized_final_loss: float  # final_loss / baseline
  loss_curve: np.ndarray  # float32[num_targets, probe_steps], training loss before each step's update


def values(network, params: chex.ArrayTree, obs: chex.Array) -> jnp.ndarray:
  """The network's value outputs float32[N, A]: `.q_values` of a QOutput, or the plain output array."""
  out = network.apply(params, obs)
  out = out.q_values if hasattr(out, "q_values") else out
  return jnp.reshape(out, (out.shape[0], -1)).astype(jnp.float32)


def make_targets(network, params: chex.ArrayTree, obs: chex.Array, target_rng: chex.PRNGKey, num_targets: int,
                 sin_scale: float) -> jnp.ndarray:
  """g_k(x) = a + sin(sin_scale * f(x; w0_k)), float32[num_targets, N, A].

  `a` float32[A] is the mean over the N inputs of `params`' values; `w0_k` is
  `network.init(split(target_rng, num_targets)[k], obs[:1])`.
  """
  obs = jnp.asarray(obs)
  offset = _mean_values(network, params, obs)  # a, float32[A]
  # One target per jitted call (not lax.map: XLA:CPU runs convolutions slowly inside loop bodies).
  keys = jax.random.split(target_rng, num_targets)
  random_values = jnp.stack([_values_jit(network, network.init(key, obs[:1]), obs) for key in keys])  # f(x; w0_k)
  return offset + jnp.sin(sin_scale * random_values)


_values_jit = jax.jit(values, static_argnums=0)
_mean_values = jax.jit(lambda network, params, obs: jnp.mean(values(network, params, obs), axis=0), static_argnums=0)


def _has_conv(params: chex.ArrayTree) -> bool:
  """True when some weight has rank >= 3 (a conv kernel): XLA:CPU loops are slow for those."""
  return any(jnp.ndim(leaf) >= 3 for leaf in jax.tree.leaves(params))


def fit_loss(network, loss: str, params: chex.ArrayTree, obs: chex.Array, target: chex.Array) -> jnp.ndarray:
  """The probe's loss on a batch: `mse` of the value outputs, or a two-hot head's `cross_entropy` to the two-hot
  projection of h(target) on its support (networks.categorical; agents.dqn.losses.two_hot_double_q_loss)."""
  if loss == "mse":
    return jnp.mean(jnp.square(values(network, params, obs) - target))
  logits = network.apply(params, obs).logits  # [N, A, num_bins]
  transform, _ = categorical.value_transform_pair(network.value_transform, network.transform_eps)
  probs = categorical.two_hot(transform(target), network.value_min, network.value_max, logits.shape[-1])
  return jnp.mean(-jnp.sum(probs * jax.nn.log_softmax(logits), axis=-1))


def _fit_steps(network, optimizer, batch_size, num_steps, unroll, loss, params, opt_state, target, obs, batch_key,
               first_step):
  """`num_steps` optimizer steps of `fit_loss` on `target` float32[N, A].

  Returns (params, opt_state, losses float32[num_steps]), the minibatch loss before each update.
  """
  num_inputs = obs.shape[0]
  mse = functools.partial(fit_loss, network, loss)

  def step(carry, step_index):
    p, s = carry
    if batch_size < num_inputs:
      idx = jax.random.choice(jax.random.fold_in(batch_key, step_index), num_inputs, (batch_size,), replace=False)
      obs_b, target_b = obs[idx], target[idx]
    else:
      obs_b, target_b = obs, target
    loss, grads = jax.value_and_grad(mse)(p, obs_b, target_b)
    updates, s = optimizer.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), loss

  step_indices = first_step + jnp.arange(num_steps)
  if unroll:
    carry, losses = (params, opt_state), []
    for t in range(num_steps):
      carry, loss = step(carry, step_indices[t])
      losses.append(loss)
    losses = jnp.stack(losses)
  else:
    carry, losses = jax.lax.scan(step, (params, opt_state), step_indices)
  return carry[0], carry[1], losses


@functools.lru_cache(maxsize=32)
def _compiled_fit(network, optimizer, batch_size, num_steps, unroll, loss, vmap_targets):
  """Jitted (params, opt_state, target, obs, batch_key, first_step) -> (params, opt_state, losses)."""
  fit = functools.partial(_fit_steps, network, optimizer, batch_size, num_steps, unroll, loss)
  if vmap_targets:
    fit = jax.vmap(fit, in_axes=(0, 0, 0, None, 0, None))
  return jax.jit(fit)


@functools.lru_cache(maxsize=32)
def _compiled_mse(network, vmap_targets):
  """Jitted (params, target, obs) -> MSE over all inputs and outputs."""
  mse = lambda params, target, obs: jnp.mean(jnp.square(values(network, params, obs) - target))
  return jax.jit(jax.vmap(mse, in_axes=(0, 0, None)) if vmap_targets else mse)


def _fit(network, optimizer, params, target, obs, batch_key, probe_steps, batch_size, unroll, chunk_steps, loss,
         vmap_targets):
  """Fits one target (or all, vmapped: leading [K] on params, target, batch_key); returns (losses, final MSE)."""
  num_chunk_steps = min(chunk_steps, probe_steps) if unroll else probe_steps
  opt_state = jax.vmap(optimizer.init)(params) if vmap_targets else optimizer.init(params)
  losses, done_steps = [], 0
  while done_steps < probe_steps:
    steps = min(num_chunk_steps, probe_steps - done_steps)  # a shorter last chunk compiles once more
    fit = _compiled_fit(network, optimizer, batch_size, steps, unroll, loss, vmap_targets)
    params, opt_state, chunk_losses = fit(params, opt_state, target, obs, batch_key, jnp.int32(done_steps))
    losses.append(chunk_losses)
    done_steps += steps
  return jnp.concatenate(losses, axis=-1), _compiled_mse(network, vmap_targets)(params, target, obs)


def target_fit_probe(
    network,
    optimizer: optax.GradientTransformation,
    params: chex.ArrayTree,
    obs: chex.Array,
    rng: chex.PRNGKey,
    config: TargetFitConfig = TargetFitConfig(),
    *,
    unroll: Optional[bool] = None,
    chunk_steps: int = 10,
    vmap_targets: Optional[bool] = None,
) -> TargetFitResult:
  """Runs the target-fitting probe (module docstring) on `params`.

  Args:
    network: a Flax module; `apply(params, obs)` returns float32[N, A] or an object with `.q_values`.
    optimizer: the agent's optimizer (`agents.dqn.learner.make_optimizer(config)`); a fresh state per target.
    params: the parameters to probe (not modified).
    obs: the probe inputs, uint8[N, 84, 84, 4] frames or float[N, D] vectors.
    rng: fixes the targets and the minibatches.
    config: number of targets, steps, minibatch size, target frequency.
    unroll: unrolled chunks instead of one `lax.scan`; None = yes for conv networks on CPU.
    chunk_steps: steps per jitted chunk when unrolling (compile time grows with it).
    vmap_targets: fit all targets in one vmapped call instead of one after another; None = when not unrolling.

  Returns:
    TargetFitResult; `loss_curve[k, t]` is target k's minibatch loss (config.loss) before update t.
  """
  check_int("chunk_steps", chunk_steps, low=1)
  obs = jnp.asarray(obs)
  if obs.ndim < 2 or obs.shape[0] < 2:
    raise ValueError(f"obs must be a batch [N, ...] of at least 2 inputs, got shape {obs.shape}")
  if config.loss == "cross_entropy" and getattr(network, "head", None) != "two_hot":
    raise ValueError("loss='cross_entropy' probes a two-hot head; this network's head is "
                     f"{getattr(network, 'head', 'not a QNetwork head')!r}")
  if unroll is None:
    unroll = jax.default_backend() == "cpu" and _has_conv(params)
  if vmap_targets is None:
    vmap_targets = not unroll
  batch_size = min(config.batch_size, obs.shape[0])
  target_rng, batch_rng = jax.random.split(rng)
  targets = make_targets(network, params, obs, target_rng, config.num_targets, config.sin_scale)  # [K, N, A]
  batch_keys = jax.random.split(batch_rng, config.num_targets)
  fit = functools.partial(_fit, network, optimizer, probe_steps=config.probe_steps, batch_size=batch_size,
                          unroll=bool(unroll), chunk_steps=chunk_steps, loss=config.loss, vmap_targets=vmap_targets)
  if vmap_targets:
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.num_targets,) + jnp.shape(x)), params)
    curves, final_mses = fit(stacked, targets, obs, batch_keys)
  else:
    results = [fit(params, targets[k], obs, batch_keys[k]) for k in range(config.num_targets)]
    curves = jnp.stack([curve for curve, _ in results])
    final_mses = jnp.stack([final_mse for _, final_mse in results])
  loss_curve = np.asarray(curves, np.float32)
  final_loss = float(np.mean(np.asarray(final_mses)))
  baseline = float(np.mean(np.var(np.asarray(targets, np.float64), axis=1)))  # per target and output, over inputs
  return TargetFitResult(
      final_loss=final_loss,
      loss_auc=float(np.mean(loss_curve, dtype=np.float64)),
      baseline=baseline,
      normalized_final_loss=final_loss / baseline if baseline > 0 else float("nan"),
      loss_curve=loss_curve,
  )


def target_fit_probe_fresh(
    network,
    optimizer: optax.GradientTransformation,
    obs: chex.Array,
    rng: chex.PRNGKey,
    config: TargetFitConfig = TargetFitConfig(),
    **kwargs: Any,
) -> TargetFitResult:
  """The same probe from a fresh initialisation, for reference: `init_rng, probe_rng = split(rng)`,
  params = `network.init(init_rng, obs[:1])`."""
  init_rng, probe_rng = jax.random.split(rng)
  obs = jnp.asarray(obs)
  params = network.init(init_rng, obs[:1])
  return target_fit_probe(network, optimizer, params, obs, probe_rng, config, **kwargs)
