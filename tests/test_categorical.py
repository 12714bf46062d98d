import jax
import numpy as np
import pytest

from networks import categorical


@pytest.mark.parametrize("num_bins,value_min,value_max", [(51, -10.0, 10.0), (11, 0.0, 1.0), (2, -1.0, 3.0)])
def test_two_hot_round_trip_is_exact_inside_the_support(num_bins, value_min, value_max):
  x = np.random.default_rng(0).uniform(value_min, value_max, size=1000).astype(np.float32)
  x = np.concatenate([x, np.linspace(value_min, value_max, num_bins, dtype=np.float32)])  # bin centres too
  probs = np.asarray(categorical.two_hot(x, value_min, value_max, num_bins))
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  assert (probs >= 0).all()
  nonzero = probs > 0
  assert (nonzero.sum(-1) <= 2).all()
  # The mass sits on adjacent bins.
  idx = [np.flatnonzero(row) for row in nonzero]
  assert all(len(i) < 2 or i[1] - i[0] == 1 for i in idx)
  back = np.asarray(categorical.expected_value(probs, value_min, value_max))
  np.testing.assert_allclose(back, x, atol=1e-5 * (value_max - value_min))


def test_two_hot_by_hand_and_clipping():
  # Support [0, 1, 2, 3, 4]: 1.25 -> 0.75 on bin 1 and 0.25 on bin 2.
  np.testing.assert_allclose(categorical.two_hot(np.float32(1.25), 0.0, 4.0, 5), [0, 0.75, 0.25, 0, 0], atol=1e-7)
  np.testing.assert_allclose(categorical.two_hot(np.float32(4.0), 0.0, 4.0, 5), [0, 0, 0, 0, 1], atol=1e-7)
  np.testing.assert_allclose(categorical.two_hot(np.float32(-7.0), 0.0, 4.0, 5), [1, 0, 0, 0, 0], atol=1e-7)
  np.testing.assert_allclose(categorical.two_hot(np.float32(99.0), 0.0, 4.0, 5), [0, 0, 0, 0, 1], atol=1e-7)


def test_two_hot_under_jit_matches_eager():
  x = np.linspace(-3, 3, 37, dtype=np.float32)
  eager = categorical.two_hot(x, -2.0, 2.0, 9)
  jitted = jax.jit(categorical.two_hot, static_argnums=(1, 2, 3))(x, -2.0, 2.0, 9)
  np.testing.assert_array_equal(eager, jitted)


def test_signed_hyperbolic_matches_formula_and_inverts():
  eps = 1e-3
  h, h_inv = categorical.value_transform_pair("signed_hyperbolic", eps)
  x = np.concatenate([np.linspace(-1000, 1000, 2001), [-1e4, -0.5, 0.0, 1e-3, 0.5, 1e4]]).astype(np.float32)
  expected = np.sign(x) * (np.sqrt(np.abs(x) + 1) - 1) + eps * x
  np.testing.assert_allclose(h(x), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h_inv(h(x)), x, rtol=1e-4, atol=1e-4)
  y = np.linspace(-30, 30, 601).astype(np.float32)
  np.testing.assert_allclose(h(h_inv(y)), y, rtol=1e-4, atol=1e-4)


def test_identity_transform_and_unknown_name():
  h, h_inv = categorical.value_transform_pair("identity")
  assert h(3.5) == 3.5 and h_inv(-2.0) == -2.0
  with pytest.raises(ValueError, match="value_transform"):
    categorical.value_transform_pair("log")
