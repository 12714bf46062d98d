"""A small non-stationary plasticity study on Atari frames, printed as one JSON object.

Lyle et al. 2023 ("Understanding Plasticity in Neural Networks", ICML) train
networks on a sequence of tasks whose targets change while the inputs stay the
same, and measure with the target-fitting probe how well a network can still
fit a new target as the sequence goes on. Qualitatively they find that networks
lose plasticity along such sequences, that layer normalization and, to a lesser
degree, weight decay reduce that loss, and that categorical (two-hot) outputs
help. This script runs the same kind of experiment, small enough for a 2-core CPU:

- Inputs: `num_obs` distinct Atari observations from random play with
  `envs.AtariEnv` (fixed `data_seed`), reduced to the newest frame, 2x2
  mean-pooled to 42x42, then centred on the mean frame and scaled to unit
  variance over the whole set: float32[num_obs, 42, 42, 1], the same for both
  networks. Why centred: random-play frames differ in a few pixels (in 1,024
  Pong frames, 64% of the pixels never change), and on raw pixels / 255 the
  MLP did not move off the mean prediction in 3,000 steps (MSE 0.500, the
  target variance), while on centred inputs it fits a task to ~0.03 in 500.
- Networks: an MLP (the project's `mlp` torso, `mlp_hidden_sizes`) and a small
  CNN (`SmallCNN`: conv 16 3x3/3 -> 14x14, conv 32 2x2/2 -> 7x7, dense 128),
  each with a 1-output head. Variants (VARIANTS): the plain network, and each
  remedy of agents/dqn/remedies.py alone, built from a `DQNConfig` with the
  project's network, optimizer (`make_optimizer`) and `Remedies` (periodic ones
  at each task switch, per-step ones inside the jitted step): layer norm, weight
  decay, Lyle et al. 2024's layer norm + weight decay, a two-hot head (cross-
  entropy on `networks.categorical.two_hot` of the target; its fit is the MSE of
  the head's expected value), resets of the head, optimizer resets, shrink-and-
  perturb (periodic, and soft toward a fresh draw or toward theta_0), ReDo,
  L2-init, CReLU, spectral norm, plasticity injection (the paper's head and the
  output layer alone), normalize-and-project, Parseval regularization, deep
  Fourier features and TRAC. And
  `two_hot_ce_probe`: the two-hot network probed with the loss it trains with
  (the probe's `loss="cross_entropy"`), the question of the study (docs/results/plasticity_study/README.md).
- Tasks: task t regresses y_t(x) = sin(1e5 * f(x; w_t)), with f a freshly
  initialised reference MLP (256, 256) -> 1 and w_t a new init per task: the
  target-fitting probe's target family (Lyle et al. 2023, sec. 2.2) with a = 0.
  The high frequency makes each task a structure-free, random-label-like
  memorisation problem, but, unlike i.i.d. random labels, y_t is a function of
  the input, so no two inputs carry conflicting labels; and every network and
  variant (with the same seed) sees the same task sequence. Each task trains
  `steps_per_task` Adam steps on minibatches; the optimizer state carries over
  from task to task, as an agent's would.
- Probe: `plasticity.target_fit.target_fit_probe` on a copy of the parameters
  before the first task (index 0) and after tasks 1, 1 + probe_every_tasks, ...
  and the last, with the variant's own optimizer (fresh state per target).

  python bench/plasticity_study.py --quick          # tiny settings: a check that it runs
  python bench/plasticity_study.py                  # the default study
  python bench/plasticity_study.py --networks mlp --variants none layer_norm --seeds 0 1 2

Writes `results.json`, `table.md` and `probe_loss.png` to `--out-dir`. Wall time and CPU time are in the JSON
(`wall_s`, `cpu_s`); docs/results/plasticity_study/README.md gives the measured figures of the default run (21 variants x 2 networks x 2 seeds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.process_setup import setup_process  # noqa: E402
setup_process("tool")  # before JAX, TensorFlow and Reverb load

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import tyro  # noqa: E402

from agents.dqn import DQNConfig  # noqa: E402
from agents.dqn.learner import make_optimizer  # noqa: E402
from agents.dqn.remedies import Remedies  # noqa: E402
from bench.learner import device_name  # noqa: E402
from common.validation import ConfigError  # noqa: E402
from envs import AtariEnv, AtariProtocol  # noqa: E402
from networks import QNetwork, torsos  # noqa: E402
from plasticity.target_fit import TargetFitConfig, fit_loss, target_fit_probe  # noqa: E402

NETWORKS = ("mlp", "cnn")
# Each variant is the plain network plus one remedy (agents/dqn/remedies.py, DQNConfig's fields; their papers are
# cited there), except Lyle et al. 2024's combination layer_norm+weight_decay and two_hot_ce_probe (below).
# "At each task switch" = every steps_per_task steps, right after a task's last step (before the probe after it).
VARIANTS = (
    "none",
    "layer_norm",                # LayerNorm before every hidden ReLU
    "weight_decay",              # --weight-decay, in --weight-decay-form (default decoupled)
    "layer_norm+weight_decay",   # Lyle et al. 2024
    "two_hot",                   # categorical head, cross-entropy to the two-hot target; probed by value MSE
    "two_hot_ce_probe",          # the same network, probed with its own loss (Lyle et al. 2023's set-up; docs/results/plasticity_study/README.md)
    "reset_head",                # the last layer and its Adam moments drawn afresh at each task switch
    "reset_optimizer",           # Adam's moments and count reset at each task switch
    "shrink_perturb",            # theta <- 0.5 theta + 0.5 theta_fresh, every layer, at each task switch (BBF's factors)
    "soft_shrink_perturb",       # theta <- (1 - c) theta + c theta_fresh at every step, --soft-shrink-perturb
    "soft_shrink_perturb_initial",  # the same toward the kept initial parameters theta_0 (Plasticine's form)
    "redo",                      # ReDo (tau 0.1) on a minibatch at each task switch
    "l2_init",                   # + --l2-init * ||theta - theta_0||^2
    "crelu",                     # CReLU activations
    "spectral_norm",             # spectral norm of the last hidden layer (Gogianu et al. 2021: the penultimate)
    "plasticity_injection",      # once, after task --injection-after-task: the head (last hidden + output layer)
                                 # frozen, a fresh one added (Nikishin et al.)
    "plasticity_injection_output",  # the same with the output layer alone as the head (Plasticine's)
    "nap",                       # layer norm + normalize-and-project after every step (Lyle et al. 2024)
    "parseval",                  # + --parseval * sum ||W W^T - I||_F^2 over the hidden layers (Chung et al. 2024)
    "fourier",                   # deep Fourier features, concat(sin, cos) (Lewandowski et al. 2025)
    "trac",                      # Adam wrapped in TRAC (Muppidi et al. 2024)
)
FRAME_SIZE = 42  # the newest 84x84 frame, 2x2 mean-pooled
TARGET_HIDDEN_SIZES = (256, 256)  # the reference network f(x; w_t) of the task targets


@dataclasses.dataclass(frozen=True)
class Args:
  game: str = "pong"
  """Game whose frames are the inputs (random play)."""
  num_obs: int = 1024
  """Distinct observations (inputs shared by every task and probe)."""
  data_seed: int = 0
  """Seed of the random play that collects the observations."""
  networks: tuple[str, ...] = NETWORKS
  """mlp, cnn."""
  variants: tuple[str, ...] = VARIANTS
  """Any of VARIANTS (default: all 21)."""
  seeds: tuple[int, ...] = (0, 1)
  """One run per seed: initial parameters, task targets, minibatches, probe targets."""
  num_tasks: int = 10
  """Tasks in the sequence (new targets on the same inputs)."""
  steps_per_task: int = 300
  """Adam steps on each task."""
  task_offset_max: float = 0.0
  """Task t's targets are shifted by a constant a_t drawn uniformly from [-task_offset_max, task_offset_max] (from
  the task's key), so that each task also moves the mean prediction, as a value function's scale moves in RL; 0:
  every task has mean about 0. The target-scale mechanism of Lyle et al. 2024, which a two-hot head addresses."""
  batch_size: int = 64
  """Inputs per training and probe step."""
  learning_rate: float = 1e-3
  """Adam learning rate (training and probe)."""
  adam_eps: float = 1e-8
  """Adam epsilon (the optax default; the project's DQN default, 1.5e-4, is for Q-learning)."""
  weight_decay: float = 0.1
  """Weight decay of the weight_decay variants (decoupled: each step subtracts learning_rate * weight_decay * w)."""
  weight_decay_form: str = "decoupled"
  """decoupled, or l2: the penalty weight_decay * ||w||^2 in the loss, scaled by Adam (the lyle2024 preset's form;
  its coefficient is 1e-5)."""
  soft_shrink_perturb: float = 1e-4
  """soft_shrink_perturb variant: c, the fresh initialisation's weight at every step (Plasticine's 1e-6 would move a
  3,000-step run by 0.3%; 1e-4 moves it by 26%)."""
  l2_init: float = 1e-2
  """l2_init variant: lambda of lambda * ||theta - theta_0||^2 (not tuned)."""
  parseval: float = 1e-3
  """parseval variant: lambda, over every hidden layer with s = 1 (the authors' lambda at their width 64; not tuned)."""
  injection_after_task: int = 5
  """plasticity_injection variant: injected once, right after this task (Nikishin et al. inject once, partway
  through training); must be < num_tasks."""
  mlp_hidden_sizes: tuple[int, ...] = (256, 256)
  """Hidden layers of the MLP."""
  num_bins: int = 51
  """Two-hot head: bins of the support."""
  value_max: float = 2.0
  """Two-hot head: support [-value_max, value_max] (task targets lie in [-1, 1], probe targets in [a - 1, a + 1])."""
  probe_targets: int = 3
  """Target-fitting probe: random targets per probe."""
  probe_steps: int = 200
  """Target-fitting probe: Adam steps per target."""
  probe_every_tasks: int = 3
  """Probe after task 1, every this many tasks after it, and after the last (and always before the first)."""
  chunk_steps: int = 5
  """CNN on CPU: steps unrolled in one jitted call (XLA:CPU runs convolutions in lax.scan bodies slowly; a longer
  unrolled chunk mostly costs compile time: with 25, compiling was ~70% of a short CNN run here)."""
  out_dir: str = "bench/out/plasticity_study"
  """results.json, table.md and probe_loss.png go here."""
  quick: bool = False
  """Tiny settings (overriding the sizes above) that finish quickly: checks that everything runs."""

  def __post_init__(self):
    for name in ("num_obs", "num_tasks", "steps_per_task", "batch_size", "probe_targets", "probe_steps",
                 "probe_every_tasks", "chunk_steps", "num_bins"):
      if getattr(self, name) < 1:
        raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
    for name, allowed in (("networks", NETWORKS), ("variants", VARIANTS)):
      unknown = [v for v in getattr(self, name) if v not in allowed]
      if unknown or not getattr(self, name):
        raise SystemExit(f"error: --{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
    injecting = {"plasticity_injection", "plasticity_injection_output"} & set(self.variants)
    if injecting and not 1 <= self.injection_after_task < self.num_tasks:
      raise SystemExit(f"error: --injection-after-task must be in [1, num_tasks), got {self.injection_after_task}")
    if not self.seeds:
      raise SystemExit("error: --seeds needs at least one seed")
    if self.batch_size > self.num_obs or self.num_bins < 2:
      raise SystemExit(f"error: --batch-size must be <= --num-obs ({self.num_obs}) and --num-bins >= 2")
    if not 0 <= self.task_offset_max <= self.value_max - 1:
      raise SystemExit(f"error: --task-offset-max must be in [0, value_max - 1] so that the two-hot support "
                       f"[-{self.value_max}, {self.value_max}] holds every target, got {self.task_offset_max}")


QUICK = dict(num_obs=256, num_tasks=3, steps_per_task=50, probe_targets=1, probe_steps=25, probe_every_tasks=1,
             injection_after_task=2,
             seeds=(0,), mlp_hidden_sizes=(64, 64))


# ----------------------------------------------------------------------------------------------------------------
# Pure pieces: inputs, networks, task targets, summaries.


def newest_frame_pooled(obs: np.ndarray) -> np.ndarray:
  """uint8[N, 84, 84, C] stacked observations -> uint8[N, 42, 42, 1]: the newest frame, 2x2 mean-pooled (rounded)."""
  frame = obs[..., -1].astype(np.float32)
  n, height, width = frame.shape
  pooled = frame.reshape(n, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
  return np.round(pooled).astype(np.uint8)[..., None]


def first_unique(frames: np.ndarray) -> np.ndarray:
  """Indices of the first occurrence of each distinct frame, in order of appearance."""
  _, first = np.unique(frames.reshape(len(frames), -1), axis=0, return_index=True)
  return np.sort(first)


def standardize(frames: np.ndarray) -> np.ndarray:
  """uint8[N, H, W, C] -> float32[N, H, W, C]: minus the mean frame, divided by the std of that residual over all pixels.

  A single scale (not one per pixel) keeps the image's relative pixel magnitudes; never-changing pixels become 0.
  """
  residual = frames.astype(np.float32) - frames.astype(np.float32).mean(axis=0)
  return residual / max(float(residual.std()), 1e-6)


def collect_inputs(game: str, num_obs: int, seed: int, num_envs: int = 8, stride_steps: int = 4,
                   max_steps: int = 50_000) -> tuple[np.ndarray, dict]:
  """`num_obs` distinct inputs uint8[num_obs, 42, 42, 1] from uniformly random play (Machado et al. 2018 protocol).

  Keeps every `stride_steps`-th agent step of each of `num_envs` games, drops repeated inputs.
  """
  rng = np.random.default_rng(seed)
  kept, unique, steps = [], np.zeros((0, FRAME_SIZE, FRAME_SIZE, 1), np.uint8), 0
  with AtariEnv(game, num_envs, AtariProtocol(), seed=seed) as env:
    obs = env.reset()
    while len(unique) < num_obs:
      if steps >= max_steps:
        raise SystemExit(f"error: only {len(unique)} distinct frames of {game} after {max_steps} steps; lower --num-obs")
      obs = env.step(rng.integers(0, env.num_actions, env.num_envs)).obs
      steps += 1
      if steps % stride_steps == 0:
        kept.append(newest_frame_pooled(obs))
        if len(kept) * num_envs >= num_obs:  # dedupe only once there could be enough
          frames = np.concatenate(kept)
          unique = frames[first_unique(frames)]
    num_seen = sum(len(k) for k in kept)
  return unique[:num_obs], {"agent_steps_per_env": steps, "frames_kept": num_seen,
                            "distinct_fraction": round(len(unique) / num_seen, 3)}


class SmallCNN(nn.Module):
  """conv 16 3x3/3 (42 -> 14), conv 32 2x2/2 (14 -> 7), dense 128; the project's LayerNorm placement and names,
  activation and spectral-norm layers (networks/torsos.py).

  The kernels do not overlap (kernel = stride): on this 2-core CPU, XLA:CPU ran the training step of overlapping
  strided convolutions (16 4x4/2, 32 3x3/2, dense 128) 1.5-4x slower at about the same multiply-adds (shared machine,
  noisy).
  """

  layer_norm: bool = False
  activation: str = "relu"
  spectral_norm_layers: tuple[str, ...] = ()

  @nn.nowrap
  def last_dense(self) -> tuple[str, int]:
    return "dense0", 128

  @nn.compact
  def __call__(self, obs, with_encoding: bool = False):
    x = torsos.to_float(obs)
    sn = self.spectral_norm_layers
    for i, (features, kernel) in enumerate(((16, 3), (32, 2))):
      inits = torsos.layer_init("lecun_normal", x.shape[-1] * kernel * kernel)  # Flax's defaults
      x = torsos.conv(features, kernel, kernel, "VALID", f"conv{i}", inits, sn)(x)
      x = torsos.norm_relu(self, x, self.layer_norm, f"conv{i}", conv=True, activation=self.activation)
    encoding = x.reshape(x.shape[:-3] + (-1,))
    x = torsos.dense(128, "dense0", torsos.layer_init("lecun_normal", encoding.shape[-1]), sn)(encoding)
    x = torsos.norm_relu(self, x, self.layer_norm, "dense0", activation=self.activation)
    return (encoding, x) if with_encoding else x


class SmallCNNQNetwork(QNetwork):
  """`QNetwork` (same heads, plasticity injection's too, `QOutput`) on `SmallCNN`, with Flax's default initializer."""

  torso: str = "small_cnn"

  @nn.nowrap
  def make_torso(self, **where) -> nn.Module:
    return SmallCNN(self.layer_norm, self.activation, tuple(self.spectral_norm_layers), **where)


def last_hidden_layer(args: Args, network: str) -> str:
  return f"dense{len(args.mlp_hidden_sizes) - 1}" if network == "mlp" else "dense0"


def variant_config(args: Args, network: str, variant: str) -> DQNConfig:
  """The variant as the agent config the project's network, optimizer and remedies are built from."""
  per_task = args.steps_per_task
  remedy = {
      "none": {},
      "layer_norm": dict(layer_norm=True),
      "weight_decay": dict(weight_decay=args.weight_decay, weight_decay_form=args.weight_decay_form),
      "layer_norm+weight_decay": dict(layer_norm=True, weight_decay=args.weight_decay,
                                      weight_decay_form=args.weight_decay_form),
      "two_hot": dict(head="two_hot"),
      "two_hot_ce_probe": dict(head="two_hot"),
      "reset_head": dict(reset_period_updates=per_task, reset_layers="head", reset_optimizer_state=True),
      "reset_optimizer": dict(optimizer_reset_period_updates=per_task),
      "shrink_perturb": dict(shrink_perturb_period_updates=per_task, shrink_perturb_layers="all"),
      "soft_shrink_perturb": dict(soft_shrink_perturb=args.soft_shrink_perturb),
      "soft_shrink_perturb_initial": dict(soft_shrink_perturb=args.soft_shrink_perturb,
                                          soft_shrink_perturb_toward="initial"),
      "redo": dict(redo_period_updates=per_task),
      "l2_init": dict(l2_init=args.l2_init),
      "crelu": dict(activation="crelu"),
      "spectral_norm": dict(spectral_norm_layers=(last_hidden_layer(args, network),)),
      "plasticity_injection": dict(plasticity_injection_update=args.injection_after_task * per_task),
      "plasticity_injection_output": dict(plasticity_injection_update=args.injection_after_task * per_task,
                                          plasticity_injection_head="output"),
      "nap": dict(layer_norm=True, nap=True),
      "parseval": dict(parseval=args.parseval, parseval_layers="torso"),
      "fourier": dict(activation="fourier"),
      "trac": dict(trac=True),
  }[variant]
  return DQNConfig(optimizer="adam", learning_rate=args.learning_rate, optimizer_eps=args.adam_eps, torso="mlp",
                   mlp_hidden_sizes=tuple(args.mlp_hidden_sizes), num_bins=args.num_bins, value_min=-args.value_max,
                   value_max=args.value_max, value_transform="identity", **remedy)


def make_network(args: Args, network: str, variant: str) -> QNetwork:
  """The studied network: one output, float32[N, 1] `q_values` (plus logits [N, 1, num_bins] for two_hot)."""
  config = variant_config(args, network, variant)
  if network == "mlp":
    return config.make_network(1)
  return SmallCNNQNetwork(num_actions=1, layer_norm=config.layer_norm, head=config.head, num_bins=config.num_bins,
                          value_min=config.value_min, value_max=config.value_max, activation=config.activation,
                          spectral_norm_layers=config.spectral_norm_layers,
                          plasticity_injection=config.plasticity_injection_update > 0,
                          injection_head=config.plasticity_injection_head)


def make_variant_optimizer(args: Args, variant: str, network: str = "mlp") -> optax.GradientTransformation:
  """Adam, with the variant's decoupled weight decay or L2-init (agents.dqn.learner.make_optimizer)."""
  return make_optimizer(variant_config(args, network, variant))


def probe_loss_name(variant: str) -> str:
  return "cross_entropy" if variant == "two_hot_ce_probe" else "mse"


TARGET_NETWORK = QNetwork(num_actions=1, torso="mlp", mlp_hidden_sizes=TARGET_HIDDEN_SIZES)


@functools.partial(jax.jit, static_argnames=("sin_scale", "offset_max"))
def task_targets(task_key: jax.Array, obs: jax.Array, sin_scale: float = 1e5, offset_max: float = 0.0) -> jax.Array:
  """y_t(x) = a_t + sin(sin_scale * f(x; w_t)), float32[N], w_t = `TARGET_NETWORK.init(task_key)`, a_t uniform in
  [-offset_max, offset_max] from fold_in(task_key, 1) (a_t = 0 when offset_max is 0)."""
  params = TARGET_NETWORK.init(task_key, obs[:1])
  y = jnp.sin(sin_scale * TARGET_NETWORK.apply(params, obs).q_values[:, 0])
  if offset_max:
    y = y + jax.random.uniform(jax.random.fold_in(task_key, 1), (), minval=-offset_max, maxval=offset_max)
  return y


def probe_indices(num_tasks: int, probe_every_tasks: int) -> list[int]:
  """Task indices after which to probe (0 = before the first task): 0, 1, 1 + k, 1 + 2k, ..., and num_tasks."""
  return sorted({0, 1, num_tasks, *range(1, num_tasks + 1, probe_every_tasks)})


def mean_std(values) -> dict:
  """Mean and (population) standard deviation over seeds; std is 0 for one seed."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def summarize(probe_loss: np.ndarray, task_fit: np.ndarray, indices: list[int]) -> dict:
  """Per-variant numbers from probe_loss float[S, P] (seeds x probes at `indices`) and task_fit float[S, T].

  `probe_first` is the probe after task 1, `probe_last` after the last task; change = last - first, ratio = last / first,
  both per seed, then mean and spread over seeds.
  """
  first, last = probe_loss[:, indices.index(1)], probe_loss[:, -1]
  return {
      "probe_init": mean_std(probe_loss[:, 0]),
      "probe_first": mean_std(first),
      "probe_last": mean_std(last),
      "probe_change": mean_std(last - first),
      "probe_ratio": mean_std(last / first),
      "task_fit_first": mean_std(task_fit[:, 0]),
      "task_fit_last": mean_std(task_fit[:, -1]),
  }


def format_number(stats: dict, digits: int = 3) -> str:
  text = f"{stats['mean']:.{digits}f}"
  return text + f" ± {stats['std']:.{digits}f}" if stats["n"] > 1 else text


def markdown_table(results: dict, args: Args) -> str:
  """One row per network x variant."""
  lines = [
      f"Probe: final MSE of the target-fitting probe ({args.probe_targets} targets x {args.probe_steps} steps; a target's "
      f"variance is about 0.5). Task fit: MSE on the task just trained (targets in "
      f"a_t + [-1, 1] with |a_t| <= {args.task_offset_max}, variance about 0.5 about a_t). "
      f"{args.num_tasks} tasks x {args.steps_per_task} steps, {args.num_obs} {args.game} frames, "
      f"seeds {list(args.seeds)} (mean ± std over seeds).",
      "",
      "| network | variant | probe init | probe after task 1 | probe after task T | change (T - 1) | ratio (T / 1) "
      "| task fit, task 1 | task fit, task T |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for network, by_variant in results.items():
    for variant, result in by_variant.items():
      s = result["summary"]
      cells = [s[k] for k in ("probe_init", "probe_first", "probe_last", "probe_change", "probe_ratio", "task_fit_first",
                              "task_fit_last")]
      lines.append(f"| {network} | {variant} | " + " | ".join(format_number(c) for c in cells) + " |")
  return "\n".join(lines) + "\n"


def plot(results: dict, indices: list[int], path: str, title: str) -> None:
  import matplotlib  # only for the figure, at the end

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after the backend is chosen

  fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results) + 2.2, 4.8), squeeze=False)
  for ax, (network, by_variant) in zip(axes[0], results.items()):
    for i, (variant, result) in enumerate(by_variant.items()):
      losses = np.asarray(result["probe_final_loss"])  # [S, P]
      style = ("-", "--", ":")[i // 10 % 3]  # the colour cycle has 10 colours
      line, = ax.plot(indices, losses.mean(axis=0), style, marker="o", markersize=3, label=variant)
      if len(losses) > 1:
        ax.fill_between(indices, losses.min(axis=0), losses.max(axis=0), color=line.get_color(), alpha=0.08)
    ax.set_title(network)
    ax.set_xlabel("tasks trained (0 = initialisation)")
    ax.set_ylabel("probe final MSE (lower = more plastic)")
  # One legend for every panel, outside the axes (the variants are the same in each).
  fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Training: one jitted function per (network, variant), reused for every task and seed.


def make_train_fn(network: QNetwork, optimizer: optax.GradientTransformation, args: Args, num_steps: int,
                  unroll: bool, remedies: Optional[Remedies] = None) -> Callable:
  """Jitted (params, opt_state, obs, targets float32[N], key, first_step) -> (params, opt_state, mse float32[num_steps]).

  Scalar head: MSE. Two-hot head: cross-entropy against `categorical.two_hot(y)` (Schrittwieser et al. 2020;
  Farebrother et al. 2024), as the probe's `cross_entropy` loss. Either way the returned per-step number is the
  minibatch MSE of the value output before the step's update. Minibatches as in the probe: uniform without
  replacement, key fold_in(key, step). `remedies`: their per-step part after each update (soft shrink-and-perturb
  with a fresh draw from fold_in(that key, 1) or toward theta_0, the spectral-norm power step).
  """
  loss_name = "cross_entropy" if network.head == "two_hot" else "mse"

  def loss_fn(params, obs_b, y_b):
    mse = fit_loss(network, "mse", params, obs_b, y_b[:, None])
    return (mse if loss_name == "mse" else fit_loss(network, loss_name, params, obs_b, y_b[:, None])), mse

  def step(carry, step_index):
    params, opt_state, obs, y, key = carry
    step_key = jax.random.fold_in(key, step_index)
    idx = jax.random.choice(step_key, obs.shape[0], (args.batch_size,), replace=False)
    (_, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, obs[idx], y[idx])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if remedies is not None:
      new_params = remedies.after_update(new_params, params, jax.random.fold_in(step_key, 1), obs[idx], opt_state)
    return (new_params, opt_state, obs, y, key), mse

  def train(params, opt_state, obs, y, key, first_step):
    carry, steps = (params, opt_state, obs, y, key), first_step + jnp.arange(num_steps)
    if unroll:
      mses = []
      for t in range(num_steps):
        carry, mse = step(carry, steps[t])
        mses.append(mse)
      mses = jnp.stack(mses)
    else:
      carry, mses = jax.lax.scan(step, carry, steps)
    return carry[0], carry[1], mses

  return jax.jit(train)


def task_switch_remedies(remedies: Remedies, args: Args, params, opt_state, rng, task: int, obs: jax.Array):
  """The periodic remedies due after task `task`'s last step (step task * steps_per_task), on a random minibatch
  (ReDo's dormancy); returns (params, opt_state, rng, [{"task", "remedy", "units"}])."""
  rng, batch_key = jax.random.split(rng)
  batch = obs[jax.random.choice(batch_key, obs.shape[0], (args.batch_size,), replace=False)]
  step = task * args.steps_per_task
  applied = remedies.apply(params, opt_state, rng, step - args.steps_per_task, step, batch)
  rows = [{"task": task, "remedy": event.remedy, "units": event.row()["units_total"]} for event in applied.events]
  return applied.params, applied.opt_state, applied.rng, rows


def run_variant(args: Args, network_name: str, variant: str, obs: jax.Array, indices: list[int]) -> dict:
  """Every seed of one network x variant: task fits, probe results, timings."""
  network = make_network(args, network_name, variant)
  # One optimizer object, so the probe's compiled code is reused across calls.
  optimizer = make_variant_optimizer(args, variant, network_name)
  remedies = Remedies(variant_config(args, network_name, variant), network, optimizer)
  unroll = network_name == "cnn" and jax.default_backend() == "cpu"
  chunk = min(args.chunk_steps, args.steps_per_task) if unroll else args.steps_per_task
  train_chunk = make_train_fn(network, optimizer, args, chunk, unroll, remedies)
  remainder = args.steps_per_task % chunk
  train_rest = make_train_fn(network, optimizer, args, remainder, unroll, remedies) if remainder else None
  # obs is an argument, not a closed-over constant: XLA would constant-fold the whole forward pass.
  full_mse = jax.jit(lambda params, obs, y: jnp.mean(jnp.square(network.apply(params, obs).q_values[:, 0] - y)))
  probe_config = TargetFitConfig(num_targets=args.probe_targets, probe_steps=args.probe_steps,
                                 batch_size=args.batch_size, loss=probe_loss_name(variant))
  probe = functools.partial(target_fit_probe, network, optimizer, obs=obs, config=probe_config,
                            chunk_steps=args.chunk_steps)

  probe_loss, probe_normalized, probe_auc, task_fit, remedy_events = [], [], [], [], []
  train_s, probe_s = [], []  # per seed; the first seed's include the compilation
  for seed in args.seeds:
    train_s.append(0.0)
    probe_s.append(0.0)
    init_key, tasks_key, batch_key, probe_key = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = network.init(init_key, obs[:1])
    opt_state = optimizer.init(params)  # carried across tasks
    remedy_rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)  # (the four keys above as before remedies existed)
    seed_probe, seed_fit, seed_events = [], [], []

    def run_probe(task_index):
      started = time.perf_counter()
      # The same probe key at the same task index for every variant: paired comparisons.
      seed_probe.append(probe(params=params, rng=jax.random.fold_in(probe_key, task_index)))
      probe_s[-1] += time.perf_counter() - started

    run_probe(0)
    for task in range(1, args.num_tasks + 1):
      started = time.perf_counter()
      y = task_targets(jax.random.fold_in(tasks_key, task), obs, offset_max=args.task_offset_max)
      key = jax.random.fold_in(batch_key, task)
      done = 0
      while done < args.steps_per_task:
        fn = train_chunk if args.steps_per_task - done >= chunk else train_rest
        params, opt_state, _ = fn(params, opt_state, obs, y, key, jnp.int32(done))
        done += chunk if fn is train_chunk else remainder
      seed_fit.append(float(full_mse(params, obs, y)))
      params, opt_state, remedy_rng, events = task_switch_remedies(remedies, args, params, opt_state, remedy_rng, task,
                                                                   obs)
      seed_events += events
      train_s[-1] += time.perf_counter() - started
      if task in indices:
        run_probe(task)
    probe_loss.append([r.final_loss for r in seed_probe])
    probe_normalized.append([r.normalized_final_loss for r in seed_probe])
    probe_auc.append([r.loss_auc for r in seed_probe])
    task_fit.append(seed_fit)
    remedy_events.append(seed_events)
    print(f"[{network_name} {variant} seed {seed}] probe {' '.join(f'{v:.3f}' for v in probe_loss[-1])} | "
          f"task fit {' '.join(f'{v:.3f}' for v in seed_fit)}", file=sys.stderr, flush=True)

  num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
  return {
      "num_params": num_params,
      "probe_final_loss": probe_loss,
      "probe_normalized_final_loss": probe_normalized,
      "probe_loss_auc": probe_auc,
      "task_fit_mse": task_fit,
      "remedy_events": remedy_events,
      "summary": summarize(np.asarray(probe_loss), np.asarray(task_fit), indices),
      "train_s_per_seed": [round(t, 2) for t in train_s],
      "probe_s_per_seed": [round(t, 2) for t in probe_s],
  }


def main(args: Args) -> None:
  if args.quick:
    args = dataclasses.replace(args, **QUICK)
  started, started_cpu = time.monotonic(), time.process_time()
  try:
    frames, data_info = collect_inputs(args.game, args.num_obs, args.data_seed)
  except ConfigError as error:  # an unknown game name
    raise SystemExit(f"error: {error}") from None
  data_info["collect_s"] = round(time.monotonic() - started, 1)
  obs = jnp.asarray(standardize(frames))
  indices = probe_indices(args.num_tasks, args.probe_every_tasks)
  results: dict = {}
  for network_name in args.networks:
    results[network_name] = {}
    for variant in args.variants:
      results[network_name][variant] = run_variant(args, network_name, variant, obs, indices)
  wall_s, cpu_s = time.monotonic() - started, time.process_time() - started_cpu
  machine = device_name()

  os.makedirs(args.out_dir, exist_ok=True)
  settings = dataclasses.asdict(args)
  report = {
      "study": "non-stationary target sequence + target-fitting probe (Lyle et al. 2023)",
      "settings": settings,
      "inputs": {"shape": list(frames.shape[1:]), "what": "newest frame, 2x2 mean-pooled, minus the mean frame, / std",
                 **data_info},
      "task_targets": f"a_t + sin(1e5 * f(x; w_t)), f = fresh MLP {TARGET_HIDDEN_SIZES} -> 1 per task, "
                      f"a_t uniform in [-{args.task_offset_max}, {args.task_offset_max}]",
      "probe_after_tasks": indices,
      "machine": machine,
      "wall_s": round(wall_s, 1),
      # User + system CPU of this process: on a shared machine, the wall time when idle is about cpu_s / 2 .. cpu_s.
      "cpu_s": round(cpu_s, 1),
      "results": results,
  }
  with open(os.path.join(args.out_dir, "results.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(args.out_dir, "table.md"), "w") as f:
    f.write(markdown_table(results, args))
  plot(results, indices, os.path.join(args.out_dir, "probe_loss.png"),
       f"{args.game} frames, {args.num_tasks} tasks x {args.steps_per_task} steps, probe {args.probe_targets} x "
       f"{args.probe_steps} steps, seeds {list(args.seeds)} (line: mean, band: min-max over seeds); {machine}")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main(tyro.cli(Args))
