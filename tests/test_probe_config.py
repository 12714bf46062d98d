"""Probe sizes follow the device the probes run on; sizes a user sets are kept (plasticity/config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from common.validation import ConfigError
from plasticity.config import CPU_SIZES, GPU_SIZES, SIZED_FIELDS, ProbeConfig
from training.probe_worker import CPU_S_PER_FIT_FRAME_STEP, rough_probe_s
from training.config import PRESETS, RunConfig


def test_unset_sizes_are_cpu_sized_on_a_cpu_and_gpu_sized_elsewhere():
  assert ProbeConfig().sizes() == dict.fromkeys(SIZED_FIELDS)  # None: "sized for the device"
  assert ProbeConfig().resolved("cpu").sizes() == CPU_SIZES
  assert ProbeConfig().resolved("gpu").sizes() == GPU_SIZES
  assert ProbeConfig().resolved("cuda").sizes() == GPU_SIZES
  assert ProbeConfig(device="cpu").resolved("gpu").sizes() == CPU_SIZES  # the worker is sent to the CPU
  # Target fitting, nearly all of a probe's cost: 800x less work on a CPU than at the GPU sizes.
  work = lambda s: s["num_targets"] * s["probe_steps"] * s["target_batch_size"]
  assert work(GPU_SIZES) == 800 * work(CPU_SIZES)


def test_sizes_a_user_sets_are_kept_on_every_device():
  config = ProbeConfig(probe_steps=2_000, grad_cov_examples=7)
  for backend in ("cpu", "gpu"):
    resolved = config.resolved(backend)
    assert resolved.probe_steps == 2_000 and resolved.grad_cov_examples == 7
  assert config.resolved("cpu").num_targets == CPU_SIZES["num_targets"]
  assert config.resolved("cpu").resolved("gpu") == config.resolved("cpu")  # resolving twice changes nothing
  smoke = PRESETS["smoke"].probe
  assert smoke.resolved("gpu") == smoke.resolved("cpu") == smoke  # the smoke preset sets every size
  assert smoke.probe_steps == 100 and smoke.num_targets == 1


def test_unset_sizes_survive_config_json_and_bad_sizes_name_the_field():
  config = dataclasses.replace(PRESETS["dqn_zoo"], probe=ProbeConfig(hessian_iterations=5))
  again = RunConfig.from_dict(config.to_dict())
  assert again == config and again.probe.probe_steps is None and again.probe.hessian_iterations == 5
  for name in SIZED_FIELDS:
    with pytest.raises(ConfigError, match=f"^{name}=0 "):
      ProbeConfig(**{name: 0})


def test_the_rough_guess_covers_nature_cnns_on_a_cpu_only():
  config = PRESETS["dqn_zoo"]
  frame_steps = 2 * CPU_SIZES["num_targets"] * CPU_SIZES["probe_steps"] * CPU_SIZES["target_batch_size"]
  assert rough_probe_s(config, "cpu") == pytest.approx(frame_steps * CPU_S_PER_FIT_FRAME_STEP)
  assert 30 <= rough_probe_s(config, "cpu") <= 120  # about a minute: the point of the CPU sizes
  assert rough_probe_s(config, "gpu") is None
  mlp = dataclasses.replace(PRESETS["smoke"], agent=dataclasses.replace(PRESETS["smoke"].agent, torso="mlp"))
  assert rough_probe_s(mlp, "cpu") is None  # an MLP: no basis until its first probe is done
