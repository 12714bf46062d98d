"""DrQ augmentation (agents/dqn/augmentation.py) and its use in DQNLearner.update.

Expectations come from independent implementations written here: a numpy shift (np.pad + slicing, and an
index-clipping formula), the intensity formula, and a re-implementation of Dopamine's
`drq_image_augmentation` (dopamine/labs/atari_100k/atari_100k_rainbow_agent.py:80-119).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.dqn import DQNConfig, DQNLearner, Transition
from agents.dqn.augmentation import drq_augment, random_intensity, random_shift
from common.validation import ConfigError

# --------------------------------------------------------------------------- independent references


def shift_offsets(key, batch, pad):
  """The per-image crop offsets Dopamine draws (`_per_image_random_crop`): maxval 2*pad, exclusive."""
  key_x, key_y = jax.random.split(key)
  x = np.asarray(jax.random.randint(key_x, (batch,), 0, 2 * pad))
  y = np.asarray(jax.random.randint(key_y, (batch,), 0, 2 * pad))
  return x, y


def numpy_random_shift(key, obs, pad):
  """Edge-pad in numpy and slice each image at its offset."""
  obs = np.asarray(obs)
  batch, height, width, _ = obs.shape
  x, y = shift_offsets(key, batch, pad)
  padded = np.pad(obs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
  return np.stack([padded[i, x[i]:x[i] + height, y[i]:y[i] + width] for i in range(batch)])


def numpy_intensity(key, obs, scale):
  noise = np.asarray(jax.random.normal(key, (obs.shape[0], 1, 1, 1)), np.float64)
  return np.asarray(obs, np.float64) * (1.0 + scale * np.clip(noise, -2.0, 2.0))


def dopamine_drq_image_augmentation(key, obs, img_pad=4, scale=0.05):
  """Dopamine's `drq_image_augmentation` with `_per_image_random_crop` and `_intensity_aug` inlined."""
  flat_obs = obs.reshape(-1, *obs.shape[-3:])
  cropped_shape = flat_obs.shape
  flat_obs = jnp.pad(flat_obs, [(0, 0), (img_pad, img_pad), (img_pad, img_pad), (0, 0)], "edge")
  key1, key2 = jax.random.split(key, num=2)
  batch_size, width, height = cropped_shape[:-1]
  key_x, key_y = jax.random.split(key2, 2)
  x = jax.random.randint(key_x, shape=(batch_size,), minval=0, maxval=flat_obs.shape[1] - width)
  y = jax.random.randint(key_y, shape=(batch_size,), minval=0, maxval=flat_obs.shape[2] - height)
  crop = jax.vmap(lambda img, i, j: jax.lax.dynamic_slice(img, [i, j, 0], cropped_shape[1:]))
  cropped_obs = crop(flat_obs, x, y)
  r = jax.random.normal(key1, shape=(cropped_obs.shape[0], 1, 1, 1))
  return (cropped_obs * (1.0 + scale * jnp.clip(r, -2.0, 2.0))).reshape(*obs.shape)


def images(batch, height=10, width=12, channels=3, seed=0):
  """Random float32 images in [0, 1]; height != width so that swapped axes show."""
  return np.random.default_rng(seed).random((batch, height, width, channels)).astype(np.float32)


def coordinate_images(batch, height, width):
  """Channel 0 holds the row index, channel 1 the column index, channel 2 the image index."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  obs = np.zeros((batch, height, width, 3), np.float32)
  obs[..., 0], obs[..., 1] = rows, cols
  obs[..., 2] = np.arange(batch)[:, None, None]
  return obs


# --------------------------------------------------------------------------- random_shift


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("pad", [1, 4])
def test_random_shift_equals_a_numpy_edge_pad_and_crop(pad, jit):
  obs = images(16)
  key = jax.random.PRNGKey(7)
  fn = jax.jit(random_shift, static_argnums=2) if jit else random_shift
  out = np.asarray(fn(key, jnp.asarray(obs), pad))
  assert out.shape == obs.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, numpy_random_shift(key, obs, pad))
  assert not np.array_equal(out, obs)  # some image did move


def test_random_shift_is_the_image_translated_by_offset_minus_pad_with_edge_replication():
  """out[b, r, c] = obs[b, clip(r + x_b - pad), clip(c + y_b - pad)]: no np.pad involved."""
  pad, obs = 4, images(32, seed=1)
  batch, height, width, _ = obs.shape
  key = jax.random.PRNGKey(3)
  out = np.asarray(random_shift(key, jnp.asarray(obs), pad))
  x, y = shift_offsets(key, batch, pad)
  rows, cols = np.arange(height), np.arange(width)
  for b in range(batch):
    src_rows = np.clip(rows + x[b] - pad, 0, height - 1)
    src_cols = np.clip(cols + y[b] - pad, 0, width - 1)
    np.testing.assert_array_equal(out[b], obs[b][src_rows][:, src_cols], err_msg=f"image {b}")
  # Both extreme shifts occur among 32 draws, and replicate the border rows there.
  b = int(np.flatnonzero(x == 0)[0])  # shifted down by pad: the top pad+1 rows all copy row 0
  np.testing.assert_array_equal(out[b, :pad + 1, :, :], np.broadcast_to(out[b, :1], (pad + 1, width, 3)))


def test_random_shift_offsets_cover_zero_to_two_pad_minus_one_and_never_two_pad():
  pad, batch, size = 4, 4096, 16
  obs = coordinate_images(batch, size, size)
  out = np.asarray(random_shift(jax.random.PRNGKey(11), jnp.asarray(obs), pad))
  np.testing.assert_array_equal(out[..., 2], obs[..., 2])  # each image stays itself (per-image crop)
  center = size // 2  # far enough from the border that no clipping hides the offset
  x = out[:, center, center, 0] - center + pad
  y = out[:, center, center, 1] - center + pad
  for offsets in (x, y):
    values, counts = np.unique(offsets, return_counts=True)
    np.testing.assert_array_equal(values, np.arange(2 * pad))  # 0..2*pad-1 all seen, 2*pad never
    assert counts.min() > 0.8 * batch / (2 * pad)  # roughly uniform
  assert abs(np.corrcoef(x, y)[0, 1]) < 0.1  # the two axes are drawn independently


# --------------------------------------------------------------------------- random_intensity


@pytest.mark.parametrize("jit", [False, True])
def test_random_intensity_scales_each_image_by_one_plus_s_times_clipped_normal(jit):
  obs, scale, key = images(64, seed=2), 0.05, jax.random.PRNGKey(5)
  fn = jax.jit(random_intensity, static_argnums=2) if jit else random_intensity
  out = np.asarray(fn(key, jnp.asarray(obs), scale))
  np.testing.assert_allclose(out, numpy_intensity(key, obs, scale), rtol=1e-6, atol=1e-7)


def test_random_intensity_factor_is_one_per_image_and_within_one_plus_minus_two_s():
  scale, batch = 0.05, 20_000
  out = np.asarray(random_intensity(jax.random.PRNGKey(9), jnp.ones((batch, 3, 2, 1)), scale), np.float64)
  factor = out[:, 0, 0, 0]
  np.testing.assert_array_equal(out, np.broadcast_to(factor[:, None, None, None], out.shape))
  assert factor.min() >= 1 - 2 * scale - 1e-6 and factor.max() <= 1 + 2 * scale + 1e-6
  # |n| > 2 happens 4.6% of the time: both clipped ends are reached exactly.
  np.testing.assert_allclose([factor.min(), factor.max()], [1 - 2 * scale, 1 + 2 * scale], rtol=1e-6)
  assert 0.03 < np.mean(np.abs(factor - 1) > 2 * scale - 1e-6) < 0.07
  np.testing.assert_allclose(factor.std(), scale * 0.9595, rtol=0.03)  # std of clip(N(0, 1), -2, 2): 0.9595


# --------------------------------------------------------------------------- drq_augment


@pytest.mark.parametrize("jit", [False, True])
def test_drq_augment_equals_dopamines_drq_image_augmentation(jit):
  obs = images(32, 84, 84, 4, seed=3)
  key = jax.random.PRNGKey(21)
  fn = jax.jit(drq_augment, static_argnums=(2, 3)) if jit else drq_augment
  out = np.asarray(fn(key, jnp.asarray(obs), 4, 0.05))
  np.testing.assert_allclose(out, dopamine_drq_image_augmentation(key, jnp.asarray(obs)), rtol=1e-6, atol=1e-7)


def test_drq_augment_crops_with_the_second_key_and_scales_with_the_first():
  obs, key = images(32, seed=4), jax.random.PRNGKey(2)
  key1, key2 = jax.random.split(key)
  np.testing.assert_array_equal(drq_augment(key, jnp.asarray(obs), 3, 0.0), numpy_random_shift(key2, obs, 3))
  np.testing.assert_allclose(drq_augment(key, jnp.asarray(obs), 0, 0.1), numpy_intensity(key1, obs, 0.1), rtol=1e-6)
  both = numpy_intensity(key1, numpy_random_shift(key2, obs, 3), 0.1)
  np.testing.assert_allclose(drq_augment(key, jnp.asarray(obs), 3, 0.1), both, rtol=1e-6)
  np.testing.assert_array_equal(drq_augment(key, jnp.asarray(obs), 0, 0.0), obs)


@pytest.mark.parametrize("field,value",
                         [("random_shift_pad", -1), ("random_shift_pad", 2.5), ("intensity_scale", -0.01)])
def test_config_rejects_bad_augmentation_values_naming_the_field(field, value):
  with pytest.raises(ConfigError, match=field):
    DQNConfig(**{field: value})


# --------------------------------------------------------------------------- learner

NUM_ACTIONS = 3
OBS_SHAPE = (12, 10, 2)


def _learner(random_shift_pad, intensity_scale, **kwargs):
  config = DQNConfig(torso="mlp", mlp_hidden_sizes=(16,), optimizer="adam", learning_rate=1e-3, loss="huber",
                     huber_delta=1.0, td_error_grad_clip=None, initializer="lecun_normal", head_bias="per_output",
                     random_shift_pad=random_shift_pad, intensity_scale=intensity_scale, **kwargs)
  return DQNLearner(config, NUM_ACTIONS)


def _pixel_batch(seed=0, batch_size=8, lead=()):
  rng = np.random.default_rng(seed)
  shape = lead + (batch_size,)
  return Transition(
      obs_tm1=rng.integers(0, 256, shape + OBS_SHAPE).astype(np.uint8),
      a_tm1=rng.integers(0, NUM_ACTIONS, shape).astype(np.int32),
      r_t=rng.normal(size=shape).astype(np.float32),
      discount_t=np.full(shape, 0.99, np.float32),
      obs_t=rng.integers(0, 256, shape + OBS_SHAPE).astype(np.uint8),
  )


def _augment_independently(key, obs, pad, scale):
  """uint8 -> [0, 1] float32, then shift (second key) and intensity (first key), all in numpy."""
  key1, key2 = jax.random.split(key)
  x = np.asarray(obs, np.float32) / 255.0
  if pad > 0:
    x = numpy_random_shift(key2, x, pad)
  if scale > 0:
    x = numpy_intensity(key1, x, scale)
  return np.asarray(x, np.float32)


@pytest.mark.parametrize("pad,scale", [(0, 0.2), (2, 0.2)])
def test_update_loss_is_the_loss_on_the_batch_augmented_with_the_keys_update_derives(pad, scale):
  learner = _learner(pad, scale)
  batch = _pixel_batch()
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  # Two different parameter sets, so the target network matters too.
  state = state._replace(target_params=learner.init(jax.random.PRNGKey(1), batch.obs_tm1).params)
  new_state, metrics = learner.update(state, batch)

  rng, augment_rng = jax.random.split(state.rng)
  key_tm1, key_t = jax.random.split(augment_rng)

  def loss_with(obs_tm1_key, obs_t_key):
    augmented = batch._replace(obs_tm1=_augment_independently(obs_tm1_key, batch.obs_tm1, pad, scale),
                               obs_t=_augment_independently(obs_t_key, batch.obs_t, pad, scale))
    loss, (_, td_error) = learner.loss(state.params, state.target_params, augmented)
    return float(loss), np.asarray(td_error)

  expected_loss, expected_td = loss_with(key_tm1, key_t)
  np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["abs_td_error"], np.abs(expected_td), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(new_state.rng, rng)  # the update keeps the first half of its split

  raw_loss = float(learner.loss(state.params, state.target_params, batch)[0])
  swapped_loss, _ = loss_with(key_t, key_tm1)  # obs_tm1 and obs_t keys exchanged
  same_key_loss, _ = loss_with(key_tm1, key_tm1)  # one draw for both observations
  undivided_loss, _ = loss_with(augment_rng, augment_rng)  # the update's key used without the second split
  for name, other in (("raw", raw_loss), ("swapped", swapped_loss), ("same key", same_key_loss),
                      ("undivided", undivided_loss)):
    assert abs(other - expected_loss) > 1e-4 * abs(expected_loss), f"{name} loss {other} ~ {expected_loss}"


def test_loss_without_rng_does_not_augment_and_with_rng_does():
  augmenting, plain = _learner(2, 0.2), _learner(0, 0.0)
  assert augmenting.augments and not plain.augments
  batch = _pixel_batch(seed=1)
  params = augmenting.init(jax.random.PRNGKey(0), batch.obs_tm1).params
  target_params = augmenting.init(jax.random.PRNGKey(1), batch.obs_tm1).params
  no_rng, (q_no_rng, td_no_rng) = augmenting.loss(params, target_params, batch)
  reference, (q_reference, td_reference) = plain.loss(params, target_params, batch)
  np.testing.assert_array_equal(no_rng, reference)
  np.testing.assert_array_equal(q_no_rng, q_reference)
  np.testing.assert_array_equal(td_no_rng, td_reference)

  key = jax.random.PRNGKey(5)
  key_tm1, key_t = jax.random.split(key)
  augmented = batch._replace(obs_tm1=_augment_independently(key_tm1, batch.obs_tm1, 2, 0.2),
                             obs_t=_augment_independently(key_t, batch.obs_t, 2, 0.2))
  with_rng = augmenting.loss(params, target_params, batch, rng=key)[0]
  np.testing.assert_allclose(with_rng, plain.loss(params, target_params, augmented)[0], rtol=1e-5)
  assert abs(float(with_rng) - float(reference)) > 1e-4 * abs(float(reference))


def test_without_augmentation_the_update_is_the_loss_on_the_raw_batch():
  learner = _learner(0, 0.0)
  assert not learner.augments
  batch = _pixel_batch(seed=2)
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  state = state._replace(target_params=learner.init(jax.random.PRNGKey(1), batch.obs_tm1).params)
  _, metrics = learner.update(state, batch)
  loss_and_grad = jax.value_and_grad(learner.loss, has_aux=True)
  (loss, (_, td_error)), grads = loss_and_grad(state.params, state.target_params, batch)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["abs_td_error"], np.abs(td_error), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads))),
                             rtol=1e-5)
  # A key changes nothing when no augmentation is configured.
  with_key = learner.loss(state.params, state.target_params, batch, rng=jax.random.PRNGKey(3))[0]
  np.testing.assert_array_equal(with_key, loss)


def test_fused_updates_draw_fresh_augmentations_exactly_as_single_updates():
  k = 2
  batches = _pixel_batch(seed=3, lead=(k,))
  single, fused = _learner(2, 0.2), _learner(2, 0.2, updates_per_call=k)
  state_single = state_fused = single.init(jax.random.PRNGKey(0), batches.obs_tm1[0])
  losses = []
  for i in range(k):
    state_single, metrics = single.update(state_single, jax.tree.map(lambda x: x[i], batches))
    losses.append(float(metrics["loss"]))
  state_fused, fused_metrics = fused.update(state_fused, batches)
  np.testing.assert_allclose(fused_metrics["loss"], np.mean(losses), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_single.params), jax.tree.leaves(state_fused.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
