"""Double DQN agent config: one frozen dataclass, validated at construction.

Defaults reproduce DQN Zoo's Double DQN (`dqn_zoo/double_q/run_atari.py`,
Quan & Ostrovski 2020), the agent Lyle et al. 2023 build on, converted from
frames to agent steps (1 agent step = 4 frames) and learner updates
(DQN Zoo learns every 16 frames = every 4 agent steps).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from common.validation import ConfigError, check_in, check_int, check_range, check_finite_fields
from networks import HEADS, TORSOS, VALUE_TRANSFORMS, QNetwork
from networks.q_network import HEAD_BIASES
from networks.torsos import CONV_PADDINGS, INITIALIZERS

LOSSES = ("huber", "mse")  # mse is 0.5 * td^2 (rlax.l2_loss)
OPTIMIZERS = ("rmsprop", "adam")

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
  """Decoupled weight decay (Loshchilov & Hutter 2019): each update subtracts learning_rate * weight_decay * w."""
  decay_layer_norm_params: bool = True
  """Whether weight decay also applies to LayerNorm scales and biases."""
  max_grad_norm: Optional[float] = None
  """Clip gradients to this global norm before the optimizer; None disables."""
  batch_size: int = 32
  """Transitions per update."""
  updates_per_call: int = 1
  """Updates fused into one jitted call with lax.scan (K > 1 amortises dispatch for small batches)."""

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
    for name in ("torso", "head", "value_transform", "loss", "optimizer", "head_bias", "initializer"):
      value = getattr(self, name)
      if isinstance(value, str):
        object.__setattr__(self, name, value.replace("-", "_"))
    object.__setattr__(self, "mlp_hidden_sizes", tuple(self.mlp_hidden_sizes))

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
    if self.max_grad_norm is not None:
      check_range("max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=False)
    check_int("batch_size", self.batch_size, low=1)
    check_int("updates_per_call", self.updates_per_call, low=1)
    check_range("epsilon_begin", self.epsilon_begin, low=0.0, high=1.0)
    check_range("epsilon_end", self.epsilon_end, low=0.0, high=1.0)
    check_int("epsilon_decay_begin_steps", self.epsilon_decay_begin_steps, low=0)
    check_int("epsilon_decay_steps", self.epsilon_decay_steps, low=1)
    check_range("eval_epsilon", self.eval_epsilon, low=0.0, high=1.0)

  @property
  def resolved_learning_rate(self) -> float:
    return self.learning_rate if self.learning_rate is not None else OPTIMIZER_DEFAULTS[self.optimizer]["learning_rate"]

  @property
  def resolved_optimizer_eps(self) -> float:
    return self.optimizer_eps if self.optimizer_eps is not None else OPTIMIZER_DEFAULTS[self.optimizer]["eps"]

  def make_network(self, num_actions: int) -> QNetwork:
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
    )
