"""Double DQN agent config: one frozen dataclass, validated at construction.

Defaults reproduce DQN Zoo's Double DQN (`dqn_zoo/double_q/run_atari.py`,
Quan & Ostrovski 2020), the agent Lyle et al. 2023 build on, converted from
frames to agent steps (1 agent step = 4 frames) and learner updates
(DQN Zoo learns every 16 frames = every 4 agent steps).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal, Optional

from agents.dqn.layer_selection import check_layer_selection
from common.validation import ConfigError, check_in, check_int, check_range, check_finite_fields
from networks.options import ACTIVATIONS, CONV_PADDINGS, HEAD_BIASES, HEADS, INITIALIZERS, TORSOS, VALUE_TRANSFORMS

if TYPE_CHECKING:
  from networks.q_network import QNetwork

LOSSES = ("huber", "mse")  # mse is 0.5 * td^2 (rlax.l2_loss)
OPTIMIZERS = ("rmsprop", "adam")
WEIGHT_DECAY_FORMS = ("decoupled", "l2")

# Reference optimizer settings. RMSProp: DQN Zoo (centred, decay 0.95,
# eps 0.01 / 32^2, lr 2.5e-4). Adam: Dopamine's JAX DQN (lr 6.25e-5, eps 1.5e-4).
OPTIMIZER_DEFAULTS = {
    "rmsprop": {"learning_rate": 2.5e-4, "eps": 0.01 / 32**2, "decay": 0.95},
    "adam": {"learning_rate": 6.25e-5, "eps": 1.5e-4},
}


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """Network, target, optimizer and exploration settings of a Double DQN agent."""

  # Network.
  torso: str = "nature"
  """Feature extractor: nature (Mnih et al. 2015), impala (Espeholt et al. 2018) or mlp."""
  mlp_hidden_sizes: tuple[int, ...] = (64, 64)
  """Hidden layer sizes of the mlp torso."""
  layer_norm: bool = False
  """LayerNorm before every hidden nonlinearity (Lyle et al. 2023)."""
  head: str = "scalar"
  """Q head: scalar (regression) or two_hot (categorical, cross-entropy on a two-hot target)."""
  num_bins: int = 51
  """Two-hot head: number of bins in the support."""
  value_min: float = -10.0
  """Two-hot head: lowest support value, in the transformed space."""
  value_max: float = 10.0
  """Two-hot head: highest support value, in the transformed space."""
  value_transform: str = "identity"
  """Two-hot head: identity, or signed_hyperbolic h(x)=sign(x)(sqrt(|x|+1)-1)+eps*x (Pohlen et al. 2018)."""
  transform_eps: float = 1e-3
  """Two-hot head: eps of the signed hyperbolic transform."""
  dueling: bool = False
  """Dueling head (Wang et al. 2016): Q = V + A - mean_a A, V and A linear on the torso's features."""
  head_bias: str = "shared"
  """Bias of the head's last layer: per_output, or shared by all actions (DQN Zoo; per bin for two-hot)."""
  initializer: str = "dqn_zoo"
  """Weight initialisation: lecun_normal (Flax), xavier_uniform (Dopamine), dqn_zoo (U(+-1/sqrt(fan_in)), biases too)."""
  conv_padding: str = "VALID"
  """Nature CNN conv padding: VALID (DQN Zoo, 3,136 features) or SAME (Dopamine, 7,744 features)."""

  # Augmentation of replayed observations (DrQ, Kostrikov et al. 2020), drawn afresh for every update.
  random_shift_pad: int = 0
  """Random shift: edge-pad by this many pixels and crop back at a random offset (DrQ: 4; 0: off)."""
  intensity_scale: float = 0.0
  """Random intensity: scale each image by 1 + s * clip(N(0, 1), -2, 2) (Dopamine's DrQ: 0.05; 0: off)."""

  # Learning target.
  discount: float = 0.99
  """Per-step discount gamma."""
  n_step: int = 1
  """Steps in the bootstrapped return (r_t sums n rewards, discount_t = gamma^n)."""
  clip_rewards: bool = True
  """Clip each reward to [-max_abs_reward, max_abs_reward] before it enters the target (logged scores stay unclipped)."""
  max_abs_reward: float = 1.0
  """Reward clipping bound."""
  loss: str = "mse"
  """Scalar head: huber or mse (0.5 td^2, rlax.l2_loss, DQN Zoo) on the TD error."""
  huber_delta: float = 1.0
  """Huber threshold (loss huber)."""
  td_error_grad_clip: Optional[float] = 1.0 / 32
  """Scalar head only: clip the gradient arriving at each TD error to [-c, c] (rlax.clip_gradient) before the loss: DQN Zoo's
  `grad_error_bound` 1/32 with loss mse. The clip acts on d(batch-mean loss)/d(td) = td/B, so at batch 32
  it bounds td at 1, at batch B at B/32. None: no clipping. (The two-hot loss has no TD error to clip.)"""
  target_update_period_updates: int = 7_500
  """Learner updates between target network copies (DQN Zoo: 120k frames / 16 frames per update)."""

  # Optimizer.
  optimizer: str = "rmsprop"
  """rmsprop (DQN Zoo settings) or adam (Dopamine settings)."""
  learning_rate: Optional[float] = None
  """Learning rate; None takes the optimizer's reference value (rmsprop 2.5e-4, adam 6.25e-5)."""
  optimizer_eps: Optional[float] = None
  """Optimizer epsilon; None takes the reference value (rmsprop 0.01/32^2, adam 1.5e-4)."""
  weight_decay: float = 0.0
  """Weight decay of every parameter, in the form weight_decay_form says; 0: none."""
  weight_decay_form: str = "decoupled"
  """decoupled (Loshchilov & Hutter 2019, AdamW): each update subtracts learning_rate * weight_decay * w after the
  optimizer's scaling; l2: the penalty weight_decay * ||w||^2 joins the loss, so its gradient 2 * weight_decay * w
  is scaled by RMSProp/Adam with the rest (Lyle et al. 2024's "L2")."""
  decay_layer_norm_params: bool = True
  """Whether weight decay also applies to LayerNorm scales and biases."""
  max_grad_norm: Optional[float] = None
  """Clip gradients to this global norm before the optimizer; None disables."""
  batch_size: int = 32
  """Transitions per update."""
  updates_per_call: int = 1
  """Updates fused into one jitted call with lax.scan (K > 1 amortises dispatch for small batches)."""

  # Plasticity remedies (agents/dqn/remedies.py): all off by default, each composable with the others and with
  # layer_norm, weight_decay and the two-hot head. Periodic ones follow the update counter (checkpointed).
  activation: Literal["relu", "crelu", "fourier"] = "relu"
  """Hidden nonlinearity: relu; crelu = concat(relu(x), relu(-x)) (Abbas et al. 2023, "Loss of Plasticity in
  Continual Deep Reinforcement Learning"); or fourier = concat(sin(x), cos(x)), deep Fourier features (Lewandowski
  et al. 2025, "Plastic Learning with Deep Fourier Features", arXiv 2410.20634; as Plasticine's DFF). The last two
  double every hidden layer's outputs, so the next layer's fan-in."""
  spectral_norm_layers: tuple[str, ...] = ()
  """Torso layers (e.g. dense0, conv2) whose kernel is divided by its largest singular value, estimated by one
  power iteration per update (Miyato et al. 2018); Gogianu et al. 2021 ("Spectral Normalisation for Deep RL: an
  Optimisation Perspective") normalise the penultimate layer, dense0."""
  reset_period_updates: int = 0
  """Every N updates, reset `reset_layers` to a fresh initialisation (Nikishin et al. 2022, "The Primacy Bias in
  Deep RL"); 0: off."""
  reset_layers: str = "head"
  """Layers a reset draws afresh: head, torso, all, or last:K (the last K of the torso's layers and the head)."""
  reset_optimizer_state: bool = True
  """Whether a reset also zeroes the optimizer moments of the parameters it resets."""
  shrink_perturb_period_updates: int = 0
  """Every N updates, theta <- shrink_factor * theta + perturb_factor * theta_fresh on `shrink_perturb_layers`
  (Ash & Adams 2020, as BBF applies it: Schwarzer et al. 2023); 0: off."""
  shrink_perturb_layers: str = "torso"
  """Layers shrink-and-perturb interpolates: head, torso, all or last:K (BBF: the encoder; its head is reset)."""
  shrink_factor: float = 0.5
  """Shrink-and-perturb: weight of the current parameters (BBF: 0.5)."""
  perturb_factor: float = 0.5
  """Shrink-and-perturb: weight of the fresh initialisation (BBF: 0.5)."""
  shrink_perturb_reset_optimizer: bool = True
  """Whether periodic shrink-and-perturb also zeroes those parameters' optimizer moments (BBF does)."""
  soft_shrink_perturb: float = 0.0
  """At every update, theta <- (1 - c) theta + c theta_target, all layers, the target as soft_shrink_perturb_toward
  says (Plasticine's soft shrink-and-perturb, c = 1e-6); 0: off."""
  soft_shrink_perturb_toward: Literal["fresh", "initial"] = "fresh"
  """Soft shrink-and-perturb's target: a new initialisation drawn at every update (fresh; an older Plasticine file,
  plasticine/standard/ppo_procgen_snp.py) or the initial parameters theta_0, kept (initial; Plasticine at aa00b4b,
  plasticine/c51_atari_base.py:141-159, applied after every optimizer step, c51_atari_plasticine.py:313-316)."""
  redo_period_updates: int = 0
  """Every N updates, ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL") on the update's replay
  batch: tau-dormant units get fresh incoming weights, zero outgoing weights and zero optimizer moments; 0: off.
  Nature CNN and MLP torsos."""
  redo_tau: float = 0.1
  """ReDo: a unit whose normalised mean activation is at most tau is dormant (0: only dead units)."""
  l2_init: float = 0.0
  """Coefficient lambda of the penalty toward the initial parameters theta_0 added to the loss, in l2_init_form
  (Kumar et al. 2023, regenerative regularisation); 0: off."""
  l2_init_form: Literal["squared", "norm"] = "squared"
  """l2_init's penalty: lambda ||theta - theta_0||^2 (squared: Kumar et al. 2023) or lambda ||theta - theta_0||_2, the
  norm of all parameters as one vector (norm: Plasticine at aa00b4b, plasticine/c51_atari_base.py:360-374)."""
  parseval: float = 0.0
  """Coefficient lambda of Parseval regularization (Chung et al. 2024, "Parseval Regularization for Continual
  Reinforcement Learning", arXiv 2412.07224): lambda sum_l ||W_l W_l^T - s I||_F^2 added to the loss, W_l the
  weights of `parseval_layers` as [outputs, inputs] (a conv kernel flattened over its window and input channels),
  s = parseval_scale, biases and LayerNorms excluded; 0: off. The authors' code (wechu/parseval_reg) takes every
  hidden layer (lambda 1e-3 or 1e-4 at width 64) and s = 2 with orthogonal init of gain sqrt(2); Plasticine (at
  aa00b4b) its dense 3136->512 layer only, lambda 1e-3, s 1."""
  parseval_scale: float = 1.0
  """Parseval regularization's s: the squared singular value each layer is pulled to (the authors: the squared gain
  of their orthogonal init, 2)."""
  parseval_layers: str = "torso"
  """Layers Parseval regularization covers: head, torso (the authors': every hidden layer), all or last:K."""
  nap: bool = False
  """Normalize-and-project (Lyle et al. 2024, "Normalization and effective learning rates in reinforcement
  learning", arXiv 2407.01800), with layer_norm: after every update each hidden layer's weights (kernel and bias
  together, one vector: the LayerNorm after them makes the layer's output blind to their scale) go back to their
  initial norm, and each LayerNorm's scale and offset together to theirs; the head is not projected. The paper's
  learning-rate schedule is not part of it. Plasticine (at aa00b4b) projects every weight matrix alone, the head's
  too, every 10,000 env steps."""
  plasticity_injection_update: int = 0
  """At this update, plasticity injection (Nikishin et al. 2023, "Deep Reinforcement Learning with Plasticity
  Injection", arXiv 2305.15555): the head freezes and a freshly initialised head minus a frozen copy of it is added,
  Q(x) = h_sg(theta)(f(x)) + h_theta'(f(x)) - h_sg(theta'_0)(f(x)), so the Q-values do not change at injection and
  as many parameters train as before (the torso f, which learns through all three heads, and theta' instead of
  theta); the target network takes the same.
  The head is what plasticity_injection_head names; 0: off."""
  plasticity_injection_head: Literal["dense", "output"] = "dense"
  """Plasticity injection's head. dense: the torso's last dense layer and the output layer, fed by the layers below
  (Nikishin et al.: the fully connected layers after the convolutional encoder; for the mlp torso, its last hidden
  layer). output: the output layer alone (Plasticine's, c51_atari_base.py:210-237 at aa00b4b, which however leaves
  the old head training and never gives the new one to its optimizer). A linear output layer injected alone
  changes nothing an SGD step predicts (each head's gradient is the features, whatever its weights): only its
  fresh optimizer moments differ from not injecting."""
  trac: bool = False
  """Wrap the optimizer in TRAC (Muppidi et al. 2024, "Fast TRAC", arXiv 2405.16642): its steps scaled by a
  factor tuned online, from the initial parameters (agents/dqn/trac.py)."""
  optimizer_reset_period_updates: int = 0
  """Every N updates, reset the whole optimizer state, moments and counters (Asadi et al. 2023; Lyle et al. 2023
  sec. 5.2); 0: off."""

  # Exploration (epsilon-greedy), in agent steps.
  epsilon_begin: float = 1.0
  """Exploration epsilon before decay starts."""
  epsilon_end: float = 0.01
  """Exploration epsilon after the decay."""
  epsilon_decay_begin_steps: int = 50_000
  """Agent steps before epsilon starts to decay (DQN Zoo: the 50k-transition replay warm-up)."""
  epsilon_decay_steps: int = 1_000_000
  """Agent steps over which epsilon decays linearly (DQN Zoo: 2% of 200M frames)."""
  eval_epsilon: float = 0.01
  """Epsilon of the evaluation policy."""

  def __post_init__(self):
    check_finite_fields(self)
    # Accept `two-hot`, `signed-hyperbolic` as typed on a command line.
    for name in ("torso", "head", "value_transform", "loss", "optimizer", "head_bias", "initializer", "activation",
                 "reset_layers", "shrink_perturb_layers"):
      value = getattr(self, name)
      if isinstance(value, str):
        object.__setattr__(self, name, value.replace("-", "_"))
    object.__setattr__(self, "mlp_hidden_sizes", tuple(self.mlp_hidden_sizes))
    object.__setattr__(self, "spectral_norm_layers", tuple(self.spectral_norm_layers))

    check_in("torso", self.torso, TORSOS)
    if not self.mlp_hidden_sizes or any(not isinstance(s, int) or s < 1 for s in self.mlp_hidden_sizes):
      raise ConfigError(f"mlp_hidden_sizes={self.mlp_hidden_sizes!r} must be one or more positive integers")
    check_in("head", self.head, HEADS)
    check_in("head_bias", self.head_bias, HEAD_BIASES)
    if self.dueling and self.head_bias != "per_output":
      raise ConfigError("dueling=True needs head_bias='per_output' (a bias shared by all advantages cancels out)")
    check_in("initializer", self.initializer, INITIALIZERS)
    object.__setattr__(self, "conv_padding", str(self.conv_padding).upper())
    check_in("conv_padding", self.conv_padding, CONV_PADDINGS)
    check_int("random_shift_pad", self.random_shift_pad, low=0)
    check_range("intensity_scale", self.intensity_scale, low=0.0)
    if self.td_error_grad_clip is not None:
      check_range("td_error_grad_clip", self.td_error_grad_clip, low=0.0, low_inclusive=False)
    check_int("num_bins", self.num_bins, low=2)
    check_range("value_min", self.value_min)
    check_range("value_max", self.value_max, low=self.value_min, low_inclusive=False)
    check_in("value_transform", self.value_transform, VALUE_TRANSFORMS)
    check_range("transform_eps", self.transform_eps, low=0.0, low_inclusive=False)
    check_range("discount", self.discount, low=0.0, high=1.0)
    check_int("n_step", self.n_step, low=1)
    check_range("max_abs_reward", self.max_abs_reward, low=0.0, low_inclusive=False)
    check_in("loss", self.loss, LOSSES)
    check_range("huber_delta", self.huber_delta, low=0.0, low_inclusive=False)
    check_int("target_update_period_updates", self.target_update_period_updates, low=1)
    check_in("optimizer", self.optimizer, OPTIMIZERS)
    if self.learning_rate is not None:
      check_range("learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
    if self.optimizer_eps is not None:
      check_range("optimizer_eps", self.optimizer_eps, low=0.0, low_inclusive=False)
    check_range("weight_decay", self.weight_decay, low=0.0)
    check_in("weight_decay_form", self.weight_decay_form, WEIGHT_DECAY_FORMS)
    if self.max_grad_norm is not None:
      check_range("max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=False)
    check_int("batch_size", self.batch_size, low=1)
    check_int("updates_per_call", self.updates_per_call, low=1)
    self._check_remedies()
    check_range("epsilon_begin", self.epsilon_begin, low=0.0, high=1.0)
    check_range("epsilon_end", self.epsilon_end, low=0.0, high=1.0)
    check_int("epsilon_decay_begin_steps", self.epsilon_decay_begin_steps, low=0)
    check_int("epsilon_decay_steps", self.epsilon_decay_steps, low=1)
    check_range("eval_epsilon", self.eval_epsilon, low=0.0, high=1.0)

  def _check_remedies(self) -> None:
    check_in("activation", self.activation, ACTIVATIONS)
    if any(not isinstance(name, str) or not name for name in self.spectral_norm_layers):
      raise ConfigError(f"spectral_norm_layers={self.spectral_norm_layers!r} must be layer names such as dense0")
    for name in ("reset_layers", "shrink_perturb_layers", "parseval_layers"):
      try:
        check_layer_selection(name, getattr(self, name))
      except ValueError as error:
        raise ConfigError(str(error)) from None
    for name in ("reset_period_updates", "shrink_perturb_period_updates", "redo_period_updates",
                 "optimizer_reset_period_updates"):
      period = getattr(self, name)
      check_int(name, period, low=0)
      if period and period % self.updates_per_call:
        raise ConfigError(f"{name}={period} must be a multiple of updates_per_call={self.updates_per_call} "
                          "(periodic remedies run between jitted calls)")
    check_range("shrink_factor", self.shrink_factor, low=0.0)
    check_range("perturb_factor", self.perturb_factor, low=0.0)
    check_range("soft_shrink_perturb", self.soft_shrink_perturb, low=0.0, high=1.0)
    check_range("redo_tau", self.redo_tau, low=0.0)
    check_range("l2_init", self.l2_init, low=0.0)
    check_in("l2_init_form", self.l2_init_form, ("squared", "norm"))
    check_range("parseval", self.parseval, low=0.0)
    check_int("plasticity_injection_update", self.plasticity_injection_update, low=0)
    check_in("plasticity_injection_head", self.plasticity_injection_head, ("dense", "output"))
    if self.plasticity_injection_update and self.plasticity_injection_head == "dense":
      if self.torso == "mlp" and not self.mlp_hidden_sizes:
        raise ConfigError("plasticity_injection_head=dense needs a hidden layer: the mlp torso here has none")
      last = f"dense{len(self.mlp_hidden_sizes) - 1}" if self.torso == "mlp" else "dense0"
      if last in self.spectral_norm_layers:
        raise ConfigError(f"plasticity_injection_head=dense copies the torso's last layer {last}, which has spectral "
                          "norm here: take it off spectral_norm_layers, or set plasticity_injection_head=output")
    if self.nap and not self.layer_norm:
      raise ConfigError("nap=True needs layer_norm=True: normalize-and-project projects the weights that a LayerNorm "
                        "follows (Lyle et al. 2024)")
    check_range("parseval_scale", self.parseval_scale, low=0.0)
    check_in("soft_shrink_perturb_toward", self.soft_shrink_perturb_toward, ("fresh", "initial"))
    if self.redo_period_updates and self.activation == "fourier":
      raise ConfigError("redo_period_updates needs ReLU units (relu or crelu): ReDo recycles units a ReLU has turned "
                        "off, and a Fourier feature's cosine is never off")
    if self.redo_period_updates and self.torso == "impala":
      raise ConfigError("redo_period_updates needs a chain torso (nature or mlp): the impala torso's residual "
                        "blocks have no single layer reading each unit")

  @property
  def has_remedy_events(self) -> bool:
    """Whether any remedy acts at moments between updates (periodic ones, or plasticity injection)."""
    return bool(self.remedy_periods) or self.plasticity_injection_update > 0

  @property
  def remedy_periods(self) -> dict[str, int]:
    """Periodic remedy -> its period in updates (only those switched on)."""
    periods = {"reset": self.reset_period_updates, "shrink_perturb": self.shrink_perturb_period_updates,
               "redo": self.redo_period_updates, "optimizer_reset": self.optimizer_reset_period_updates}
    return {name: period for name, period in periods.items() if period}

  @property
  def resolved_learning_rate(self) -> float:
    return self.learning_rate if self.learning_rate is not None else OPTIMIZER_DEFAULTS[self.optimizer]["learning_rate"]

  @property
  def resolved_optimizer_eps(self) -> float:
    return self.optimizer_eps if self.optimizer_eps is not None else OPTIMIZER_DEFAULTS[self.optimizer]["eps"]

  def make_network(self, num_actions: int) -> QNetwork:
    from networks.q_network import QNetwork  # Flax, JAX: the config imports without them (flags first)

    return QNetwork(
        num_actions=num_actions,
        torso=self.torso,
        layer_norm=self.layer_norm,
        mlp_hidden_sizes=self.mlp_hidden_sizes,
        head=self.head,
        num_bins=self.num_bins,
        value_min=self.value_min,
        value_max=self.value_max,
        value_transform=self.value_transform,
        transform_eps=self.transform_eps,
        initializer=self.initializer,
        conv_padding=self.conv_padding,
        head_bias=self.head_bias,
        dueling=self.dueling,
        activation=self.activation,
        spectral_norm_layers=self.spectral_norm_layers,
        plasticity_injection=self.plasticity_injection_update > 0,
        injection_head=self.plasticity_injection_head,
    )
