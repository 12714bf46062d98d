"""Plasticity remedies: pure functions on a Q-network's variables and its optimizer state.

Each periodic remedy takes the current parameters, a fresh initialisation of the same network and the
optimizer state, and returns the new parameters and optimizer state plus a `RemedyEvent` saying what it
touched; `DQNLearner.apply_remedies` runs the ones that are due (their schedule is the learner's update
counter, so it survives a checkpoint and resume with the TrainState). The per-update remedies live in the
jitted update (soft shrink-and-perturb) and in the optimizer (`l2_init`, an optax transform whose state
holds the initial parameters).

Layers are the units the remedies address: the torso's conv and dense layers in the order the network
computes them (a layer owns its LayerNorm, `<layer>_ln`), then `head`. A layer selection is written
`head`, `torso`, `all` or `last:K` (the last K layers; `last:1` is the head).

References:
- resets: Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning";
- shrink-and-perturb: Ash & Adams 2020, "On Warm-Starting Neural Network Training"; periodic, as BBF
  (Schwarzer et al. 2023, google-research/bigger_better_faster/bbf/agents/spr_agent.py, `jit_reset` and
  `interpolate_weights`: new = shrink_factor * old + perturb_factor * fresh); per update, as Plasticine
  (RLE-Foundation/Plasticine, plasticine/standard/ppo_procgen_snp.py, `sp_type='soft'`:
  p = c p + (1 - c) p_fresh with a new random initialisation at every update; or, as Plasticine at aa00b4b,
  plasticine/c51_atari_base.py:141-159, toward the initial parameters it keeps);
- ReDo: Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning" (and Dopamine's
  dopamine/labs/redo/weight_recyclers.py, `NeuronRecycler`): tau-dormant units get fresh incoming weights,
  zero outgoing weights and zero optimizer moments on those weights;
- L2 toward the initial parameters: Kumar et al. 2023, "Maintaining Plasticity in Continual Learning via
  Regenerative Regularization" (squared); Plasticine's form, the unsquared norm (c51_atari_base.py:360-374);
- optimizer resets: Asadi et al. 2023, "Resetting the Optimizer in Deep RL"; Lyle et al. 2023 sec. 5.2;
- normalize-and-project: Lyle et al. 2024, "Normalization and effective learning rates in reinforcement learning"
  (Plasticine's plasticine_normalize_and_project, c51_atari_base.py:179-208 at aa00b4b, differs: see DQNConfig.nap);
- Parseval regularization: Chung et al. 2024, "Parseval Regularization for Continual Reinforcement Learning"
  (the authors' code, wechu/parseval_reg; Plasticine's PRLinear, plasticine/utils.py:54-85 at aa00b4b).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from agents.dqn.layer_selection import LAYER_SELECTIONS, check_layer_selection, last_k  # noqa: F401
from networks.activations import dormant_scores, hidden_preactivations
from networks.spectral_norm import SPECTRAL_NORM, power_step_all
from networks.q_network import INJECTED_HEAD, INJECTED_HEAD_FROZEN, INJECTION, params_at
from networks.torsos import LAYER_NORM_SUFFIX

HEAD = "head"


# -- layers --------------------------------------------------------------------------------------------------


def network_layers(params: chex.ArrayTree) -> list[str]:
  """The network's layers in computation order: `torso/<layer>` (LayerNorms excluded), then `head`."""
  torso = params["params"].get("torso", {})
  layers = [f"torso/{name}" for name in torso if not name.endswith(LAYER_NORM_SUFFIX)]
  return layers + [HEAD]


def select_layers(params: chex.ArrayTree, selection: str) -> list[str]:
  """The layers a selection names (see the module docstring); ValueError when last:K asks for too many."""
  layers = network_layers(params)
  if selection == "all":
    return layers
  if selection == "head":
    return [HEAD]
  if selection == "torso":
    return layers[:-1]
  k = last_k(selection)
  if k > len(layers):
    raise ValueError(f"{selection!r} asks for {k} layers; this network has {len(layers)}: {', '.join(layers)}")
  return layers[-k:]


def _owner(path: Sequence[str]) -> str:
  """The layer a `params` leaf path belongs to: ('params', 'torso', 'conv0_ln', 'scale') -> 'torso/conv0'."""
  if path[1] == "torso":
    return "torso/" + str(path[2]).removesuffix(LAYER_NORM_SUFFIX)
  return str(path[1])


def layer_masks(params: chex.ArrayTree, layers: Sequence[str]) -> dict:
  """A flat {path: bool} over the `params` collection: True for every leaf owned by one of `layers`."""
  wanted = set(layers)
  flat = traverse_util.flatten_dict(params["params"])
  return {("params", *path): _owner(("params", *path)) in wanted for path in flat}


# -- blending parameters and optimizer state -----------------------------------------------------------------


def blend_params(params, fresh, masks: Mapping[tuple, Any], old_weight: float = 0.0, new_weight: float = 1.0):
  """Where a mask is set: old_weight * params + new_weight * fresh (elementwise masks allowed); elsewhere
  the parameters unchanged. Collections other than `params` (spectral-norm vectors) are kept."""
  flat = traverse_util.flatten_dict(params)
  fresh_flat = traverse_util.flatten_dict(fresh)
  out = {}
  for path, value in flat.items():
    mask = masks.get(path, False)
    if mask is False:
      out[path] = value
    else:
      out[path] = jnp.where(mask, old_weight * value + new_weight * fresh_flat[path], value)
  return traverse_util.unflatten_dict(out)


def union_masks(*masks: Mapping[tuple, Any]) -> dict:
  """Elementwise OR of masks keyed by path (a path missing from one counts as unmasked there)."""
  out: dict = {}
  for mask in masks:
    for path, value in mask.items():
      out[path] = value if path not in out else jnp.logical_or(out[path], value)
  return out


class L2InitState(NamedTuple):
  """The anchor of `l2_init`: the parameters at initialisation (theta_0)."""
  init_params: chex.ArrayTree


def l2_init(coefficient: float, form: str = "squared") -> optax.GradientTransformation:
  """Adds the gradient of the penalty toward theta_0: of c ||theta - theta_0||^2 (squared; Kumar et al. 2023),
  2 c (theta - theta_0); of c ||theta - theta_0||_2 over the `params` collection as one vector (norm; Plasticine's
  regenerative regularisation, plasticine/c51_atari_base.py:360-374 at aa00b4b), c (theta - theta_0) / ||theta -
  theta_0||_2, and 0 where theta = theta_0 (the norm's subgradient there).

  Placed before the optimizer's scaling, it is the gradient of the regularised loss; theta_0 is what
  `init` sees (the network's initial parameters) and stays in the optimizer state, so checkpoints carry it.
  """

  def init(params):
    return L2InitState(init_params=jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("l2_init needs the parameters: optimizer.update(grads, state, params)")
    difference = jax.tree.map(lambda p, p0: p - p0, params, state.init_params)
    if form == "squared":
      scale = 2.0 * coefficient
    else:
      norm = optax.global_norm(difference["params"] if isinstance(difference, Mapping) and "params" in difference
                               else difference)
      scale = jnp.where(norm > 0.0, coefficient / jnp.where(norm > 0.0, norm, 1.0), 0.0)
    return jax.tree.map(lambda g, d: g + scale * d, updates, difference), state

  return optax.GradientTransformation(init, update)


def parseval_penalty(params, coefficient: float, scale: float, layers: Sequence[str]) -> jax.Array:
  """coefficient * sum over the kernels of `layers` of ||W W^T - scale I||_F^2 (Chung et al. 2024), W a kernel
  as [outputs, inputs]: Flax's [..., inputs, outputs] flattened to [fan_in, outputs] and transposed, so W W^T is the
  Gram matrix of the output units' weight vectors, as the authors' torch (out, in) weights give it."""
  masks = layer_masks(params, layers)
  total = jnp.zeros((), jnp.float32)
  for path, kernel in traverse_util.flatten_dict(params["params"]).items():
    if path[-1] == "kernel" and masks[("params", *path)]:
      w = kernel.reshape(-1, kernel.shape[-1]).T  # [outputs, fan_in]
      gram = w @ w.T
      total = total + jnp.sum(jnp.square(gram - scale * jnp.eye(gram.shape[0], dtype=gram.dtype)))
  return coefficient * total


def parseval(coefficient: float, scale: float, selection: str) -> optax.GradientTransformation:
  """Adds the gradient of `parseval_penalty` over the layers `selection` names (a per-update remedy with no state:
  nothing to checkpoint). Placed before the optimizer's scaling, as the other penalties."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("parseval needs the parameters: optimizer.update(grads, state, params)")
    layers = select_layers(params, selection)
    grads = jax.grad(parseval_penalty)(params, coefficient, scale, layers)
    return jax.tree.map(jnp.add, updates, grads), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def nap_project(params, initial):
  """Normalize-and-project's projection (Lyle et al. 2024): every hidden layer's {kernel, bias} and every
  LayerNorm's {scale, bias}, each group as one vector, scaled to the norm the group has in `initial`; the head and
  collections other than `params` (spectral-norm vectors) are left as they are."""
  flat = traverse_util.flatten_dict(params["params"])
  initial_flat = traverse_util.flatten_dict(initial["params"])
  groups: dict[tuple, list[tuple]] = {}
  for path in flat:
    if path[0] == "torso":  # torso/<layer> or torso/<layer>_ln: one group each
      groups.setdefault(path[:2], []).append(path)
  out = dict(flat)
  for members in groups.values():
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(flat[p])) for p in members))
    target = jnp.sqrt(sum(jnp.sum(jnp.square(initial_flat[p])) for p in members))
    factor = jnp.where(norm > 0.0, target / jnp.where(norm > 0.0, norm, 1.0), 1.0)
    for p in members:
      out[p] = flat[p] * factor
  return {**params, "params": traverse_util.unflatten_dict(out)}


def keep_initial_params() -> optax.GradientTransformation:
  """Keeps theta_0 in the optimizer state (as `l2_init` does) and leaves the updates as they are: the anchor of
  soft shrink-and-perturb toward the initial parameters when there is no l2_init to hold it."""

  def init(params):
    return L2InitState(init_params=jax.tree.map(jnp.asarray, params))

  return optax.GradientTransformation(init, lambda updates, state, params=None: (updates, state))


def initial_params(opt_state):
  """theta_0 from an optimizer state holding it (`l2_init` or `keep_initial_params`); raises if none does."""
  for node in jax.tree.leaves(opt_state, is_leaf=_is_anchor):
    if _is_anchor(node):
      return node.init_params
  raise ValueError("the optimizer state holds no initial parameters (l2_init or keep_initial_params)")


def _is_anchor(node) -> bool:
  return isinstance(node, L2InitState)


def _param_path(key_path) -> Optional[tuple]:
  """The variables path inside an optimizer-state leaf's key path (from its first 'params' key), or None."""
  keys = [getattr(k, "key", None) for k in key_path]
  if "params" not in keys:
    return None
  start = keys.index("params")
  suffix = keys[start:]
  return tuple(suffix) if all(isinstance(k, str) for k in suffix) else None


def blend_opt_state(opt_state, fresh_opt_state, masks: Optional[Mapping[tuple, Any]]):
  """Optimizer moments set to their initial values where `masks` is set (None: everywhere, counters too).

  Every leaf of the optimizer state that mirrors a parameter (RMSProp's and Adam's moments) is matched to
  it by path. The l2_init anchor (theta_0) is never reset: it is where the regulariser pulls, not a moment.
  """

  def blend(key_path, old, fresh):
    if _is_anchor(old):
      return old
    if masks is None:
      return fresh
    path = _param_path(key_path)
    mask = masks.get(path, False) if path is not None else False
    return old if mask is False else jnp.where(mask, fresh, old)

  return jax.tree_util.tree_map_with_path(blend, opt_state, fresh_opt_state, is_leaf=_is_anchor)


# -- events --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RemedyEvent:
  """One application of a periodic remedy: what it was, at which update, which layers, how many units."""

  remedy: str
  step: int
  layers: list[str]
  units: dict[str, int] = dataclasses.field(default_factory=dict)
  optimizer_reset: bool = False

  def row(self) -> dict:
    total = int(sum(self.units.values()))
    # `<remedy>_units` is the scalar TensorBoard plots (remedies/<remedy>_units); the rest is in the JSON row.
    return {"remedy": self.remedy, "step": self.step, "layers": self.layers, "units": self.units,
            "units_total": total, f"{self.remedy}_units": total, "optimizer_reset": self.optimizer_reset}


def due(period_updates: int, step_before: int, step_after: int) -> bool:
  """True when a multiple of the period lies in (step_before, step_after] (the update counter's advance)."""
  return period_updates > 0 and step_after // period_updates > step_before // period_updates


# -- ReDo ----------------------------------------------------------------------------------------------------


def redo_masks(params, preactivations: Mapping[str, chex.Array], tau: float, crelu: bool = False):
  """Masks of ReDo (Sokar et al. 2023) and the dormant unit counts per layer.

  A hidden layer's unit is tau-dormant when its score (networks.activations.dormant_scores: the mean |activation|
  over the batch and positions, divided by the layer's mean) is at most tau. Its incoming weights (kernel
  column, bias, LayerNorm scale and bias) are marked `incoming`, and the weights that read it in the next
  layer (kernel rows; for a conv layer flattened into a dense one, every position's row of that channel)
  are marked `outgoing`. With CReLU each unit has two outputs, relu(x) and relu(-x): the unit is
  recycled when both are dormant.

  Only chain networks (Nature CNN, MLP) have a next layer for every hidden layer.
  Returns (incoming masks, outgoing masks, {layer: dormant units}), masks keyed by variables path.
  """
  layers = network_layers(params)
  flat = traverse_util.flatten_dict(params["params"])
  incoming: dict = {}
  outgoing: dict = {}
  counts: dict[str, int] = {}
  for index, layer in enumerate(layers[:-1]):
    name = layer.split("/", 1)[1]
    scores = dormant_scores(jnp.maximum(preactivations[name], 0.0))
    dormant = scores <= tau
    if crelu:  # the sown pre-activation is concat(x, -x): unit i has outputs i and i + U
      half = dormant.shape[0] // 2
      dormant = dormant[:half] & dormant[half:]
    counts[layer] = int(jnp.sum(dormant))
    for path, value in flat.items():
      if _owner(("params", *path)) == layer and path[-1] in ("kernel", "bias", "scale"):
        incoming[("params", *path)] = _broadcast_last(dormant, value)
    read = jnp.concatenate([dormant, dormant]) if crelu else dormant
    for path, value in flat.items():
      if _owner(("params", *path)) == layers[index + 1] and path[-1] == "kernel":
        outgoing[("params", *path)] = _rows_reading(read, value)
  return incoming, outgoing, counts


def _broadcast_last(unit_mask: jax.Array, value: jax.Array) -> jax.Array:
  """A [units] mask over a parameter whose last axis is the layer's units (kernel, bias, LN scale/bias)."""
  if value.shape[-1] != unit_mask.shape[0]:
    raise ValueError(f"a parameter of shape {value.shape} does not end in the layer's {unit_mask.shape[0]} units")
  return jnp.broadcast_to(unit_mask, value.shape)


def _rows_reading(input_mask: jax.Array, kernel: jax.Array) -> jax.Array:
  """The entries of the next layer's kernel that read the masked inputs (conv: axis -2; dense: rows)."""
  inputs = kernel.shape[-2]
  if inputs % input_mask.shape[0]:
    raise ValueError(f"a kernel with {inputs} inputs cannot read {input_mask.shape[0]} units")
  # A conv output [H, W, C] flattened row-major reads channel c at every index p * C + c.
  rows = jnp.tile(input_mask, inputs // input_mask.shape[0])
  return jnp.broadcast_to(rows[:, None], kernel.shape)  # dense [in, out]; conv [kh, kw, in, out]


# -- one agent config's remedies on one network ------------------------------------------------------------


class Applied(NamedTuple):
  """What `Remedies.apply` returns: the new variables, target, optimizer state and RNG, and one event per remedy."""

  params: chex.ArrayTree
  target_params: Optional[chex.ArrayTree]
  opt_state: Any
  rng: chex.PRNGKey
  events: list


class Remedies:
  """The remedies a `DQNConfig` switches on, for one network and its optimizer, in any training loop (the DQN
  learner, bench/plasticity_study.py).

  `apply` runs, eagerly between jitted steps, every periodic remedy due since `step_before`: reset,
  shrink_perturb, redo, optimizer_reset, in that order, each on a fresh initialisation drawn from `rng`
  (so a resumed run draws what an uninterrupted one would). `after_update` is the per-update part, traced
  inside the jitted step: soft shrink-and-perturb and the spectral-norm power step. (L2-init lives in the
  optimizer, CReLU and spectral norm in the network.)
  """

  def __init__(self, config, network, optimizer: optax.GradientTransformation):
    self.config, self.network, self.optimizer = config, network, optimizer

  def fresh_params(self, rng: chex.PRNGKey, obs: chex.Array) -> chex.ArrayTree:
    """A new initialisation of the network's variables (obs: any batch, for shapes)."""
    return self.network.init(rng, obs[:1])

  def apply(self, params, opt_state, rng: chex.PRNGKey, step_before: int, step: int, obs: chex.Array,
            target_params=None) -> Applied:
    """The periodic remedies due in (step_before, step]; `obs` a batch of inputs (ReDo's dormancy, shapes).
    Parameters a remedy touches are copied into `target_params` too (None: no target network)."""
    events = []
    for name, period in self.config.remedy_periods.items():
      if not due(period, step_before, step):
        continue
      rng, key = jax.random.split(rng)
      params, opt_state, masks, event = getattr(self, f"_{name}")(params, opt_state, self.fresh_params(key, obs), obs)
      if target_params is not None:
        target_params = blend_params(target_params, params, masks)
      events.append(dataclasses.replace(event, step=step))
    if step_before < self.config.plasticity_injection_update <= step:
      rng, key = jax.random.split(rng)
      params, opt_state, masks, event = self._plasticity_injection(params, opt_state, self.fresh_params(key, obs))
      if target_params is not None:
        target_params = blend_params(target_params, params, masks)
      events.append(dataclasses.replace(event, step=step))
    return Applied(params, target_params, opt_state, rng, events)

  def _plasticity_injection(self, params, opt_state, fresh):
    """Nikishin et al. 2023: the network's head (`QNetwork.injection_layers`) freshly drawn twice, one copy to
    train and one frozen (their difference is 0), and the flag that switches the network to own head + injected -
    frozen, the own and the frozen heads' parameters behind stop_gradient (the encoder still learns through them);
    the new head's optimizer moments start afresh. `after_update` keeps the own head and the frozen copy where they
    are from then on."""
    flat = traverse_util.flatten_dict(params)
    masks, units = {}, {}
    for layer, path in self.network.injection_layers().items():
      fresh_layer = traverse_util.flatten_dict(params_at(fresh["params"], path))
      for name in (INJECTED_HEAD, INJECTED_HEAD_FROZEN):
        for leaf, value in fresh_layer.items():
          flat[("params", name, layer, *leaf)] = value
          masks[("params", name, layer, *leaf)] = True
      units["/".join(path)] = int(sum(v.shape[-1] for p, v in fresh_layer.items() if p[-1] == "kernel"))
    flat[(INJECTION, "active")] = jnp.ones((), jnp.float32)
    masks[(INJECTION, "active")] = True
    params = traverse_util.unflatten_dict(flat)
    units = {layer: n for layer, n in units.items() if n}  # (a LayerNorm has no units of its own)
    return (params, self._moments(opt_state, params, masks, True), masks,
            RemedyEvent("plasticity_injection", 0, list(units), units, optimizer_reset=True))

  def after_update(self, params, params_before, key: chex.PRNGKey, obs: chex.Array, opt_state=None):
    """The parameters after an optimizer step, with the per-update remedies applied (jit-able); `opt_state` (the
    step's new one) holds theta_0 for soft shrink-and-perturb toward the initial parameters."""
    c = self.config.soft_shrink_perturb
    if c > 0.0:  # Plasticine's soft shrink-and-perturb: toward a new draw every update, or toward theta_0
      target = (self.fresh_params(key, obs) if self.config.soft_shrink_perturb_toward == "fresh"
                else initial_params(opt_state))
      everything = {("params", *path): True for path in traverse_util.flatten_dict(params["params"])}
      params = blend_params(params, target, everything, old_weight=1.0 - c, new_weight=c)
    if self.config.nap:  # after the soft pull, so that the norms hold after the whole update
      params = nap_project(params, initial_params(opt_state))
    if INJECTION in params:  # no optimizer moves the flag; after injection the own head and the frozen copy stay
      active = params_before[INJECTION]["active"] > 0
      frozen = traverse_util.flatten_dict(params["params"])
      before = traverse_util.flatten_dict(params_before["params"])
      own = tuple(self.network.injection_layers().values())
      for path in frozen:
        if path[0] == INJECTED_HEAD_FROZEN:
          frozen[path] = before[path]
        elif any(path[:len(layer)] == layer for layer in own):
          frozen[path] = jnp.where(active, before[path], frozen[path])
      params = {**params, INJECTION: params_before[INJECTION], "params": traverse_util.unflatten_dict(frozen)}
    if SPECTRAL_NORM in params:  # the optimizer does not move the power-iteration vectors; one power step does
      params = power_step_all({**params, SPECTRAL_NORM: params_before[SPECTRAL_NORM]})
    return params

  # Each periodic remedy: (params, opt_state, fresh, obs) -> (params, opt_state, touched masks, event).

  def _layer_event(self, name: str, params, layers: list[str], reset_optimizer: bool) -> RemedyEvent:
    units = {}
    for layer in layers:
      subtree = params["params"][HEAD] if layer == HEAD else params["params"]["torso"][layer.removeprefix("torso/")]
      kernels = [v for path, v in traverse_util.flatten_dict(subtree).items() if path[-1] == "kernel"]
      units[layer] = int(sum(kernel.shape[-1] for kernel in kernels))
    return RemedyEvent(name, 0, layers, units, optimizer_reset=reset_optimizer)

  def _moments(self, opt_state, params, masks, reset: bool):
    return blend_opt_state(opt_state, self.optimizer.init(params), masks) if reset else opt_state

  def _reset(self, params, opt_state, fresh, obs):
    reset_optimizer = self.config.reset_optimizer_state
    layers = select_layers(params, self.config.reset_layers)
    masks = layer_masks(params, layers)
    params = blend_params(params, fresh, masks)
    return (params, self._moments(opt_state, params, masks, reset_optimizer), masks,
            self._layer_event("reset", params, layers, reset_optimizer))

  def _shrink_perturb(self, params, opt_state, fresh, obs):
    config = self.config
    layers = select_layers(params, config.shrink_perturb_layers)
    masks = layer_masks(params, layers)
    params = blend_params(params, fresh, masks, config.shrink_factor, config.perturb_factor)
    return (params, self._moments(opt_state, params, masks, config.shrink_perturb_reset_optimizer), masks,
            self._layer_event("shrink_perturb", params, layers, config.shrink_perturb_reset_optimizer))

  def _redo(self, params, opt_state, fresh, obs):
    preactivations = hidden_preactivations(self.network, params, obs)
    incoming, outgoing, counts = redo_masks(params, preactivations, self.config.redo_tau,
                                            crelu=self.config.activation == "crelu")
    params = blend_params(params, fresh, incoming)
    params = blend_params(params, params, outgoing, old_weight=0.0, new_weight=0.0)
    masks = union_masks(incoming, outgoing)
    return (params, self._moments(opt_state, params, masks, True), masks,
            RemedyEvent("redo", 0, list(counts), counts, optimizer_reset=True))

  def _optimizer_reset(self, params, opt_state, fresh, obs):
    return (params, blend_opt_state(opt_state, self.optimizer.init(params), None), {},
            RemedyEvent("optimizer_reset", 0, network_layers(params), {}, optimizer_reset=True))
