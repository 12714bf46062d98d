"""DrQ image augmentation (Kostrikov et al. 2020, "Image Augmentation Is All You Need"), as Dopamine's
Atari 100k agents apply it to replayed observations (dopamine/labs/atari_100k/atari_100k_rainbow_agent.py).

Both functions take float32[B, H, W, C] observations already scaled to [0, 1] and one key, and draw one
shift or one intensity factor per image.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def random_shift(key: chex.PRNGKey, obs: chex.Array, pad: int) -> chex.Array:
  """Edge-pads each image by `pad` pixels and crops it back to H x W at a random offset.

  The offset is uniform over 0..2*pad-1 on each axis, independently per image: Dopamine draws it with
  `jax.random.randint(key, (B,), 0, padded_size - size)`, whose maxval is exclusive
  (atari_100k_rainbow_agent.py:86-96, `_per_image_random_crop`; padding 'edge' at :110-114).
  """
  chex.assert_rank(obs, 4)
  batch, height, width, channels = obs.shape
  padded = jnp.pad(obs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
  key_x, key_y = jax.random.split(key)
  x = jax.random.randint(key_x, (batch,), 0, 2 * pad)
  y = jax.random.randint(key_y, (batch,), 0, 2 * pad)
  crop = lambda image, i, j: jax.lax.dynamic_slice(image, (i, j, 0), (height, width, channels))
  return jax.vmap(crop)(padded, x, y)


def random_intensity(key: chex.PRNGKey, obs: chex.Array, scale: float) -> chex.Array:
  """Multiplies each image by 1 + scale * clip(n, -2, 2), n ~ N(0, 1) per image (Schwarzer et al. 2021;
  Dopamine's `_intensity_aug`, atari_100k_rainbow_agent.py:99-103, scale 0.05)."""
  chex.assert_rank(obs, 4)
  noise = jax.random.normal(key, (obs.shape[0], 1, 1, 1))
  return obs * (1.0 + scale * jnp.clip(noise, -2.0, 2.0))


def drq_augment(key: chex.PRNGKey, obs: chex.Array, shift_pad: int, intensity_scale: float) -> chex.Array:
  """Random shift then random intensity, with Dopamine's key use (`drq_image_augmentation`, :106-119:
  split the key in two, the second for the crop, the first for the intensity). 0 turns a part off."""
  key_intensity, key_shift = jax.random.split(key)
  if shift_pad > 0:
    obs = random_shift(key_shift, obs, shift_pad)
  if intensity_scale > 0.0:
    obs = random_intensity(key_intensity, obs, intensity_scale)
  return obs
