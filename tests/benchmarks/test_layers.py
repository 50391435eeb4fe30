"""The layer benchmark's alternative forms compute the model's functions
(benchmarks/layers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import layers


@pytest.mark.parametrize("window,stride", [(3, 2), (2, 2), (3, 3)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_slice_max_pool_equals_reduce_window_with_ties(window, stride, dtype):
  # Small integers: many windows hold their maximum more than once, and the
  # gradient must go to the first one, like select-and-scatter. 11 and 10
  # leave edge rows/columns outside every window for some (window, stride).
  x = jax.random.randint(jax.random.key(1), (2, 11, 10, 5), -2, 3)
  x = x.astype(dtype)
  y, vjp = jax.vjp(lambda x: layers.slice_max_pool(x, window, stride), x)
  y_ref, vjp_ref = jax.vjp(
      lambda x: layers.reduce_window_pool(x, window, stride), x
  )
  np.testing.assert_array_equal(
      np.asarray(y, np.float32), np.asarray(y_ref, np.float32)
  )
  # Integer cotangents: overlapping windows' sums are exact in any order.
  g = jax.random.randint(jax.random.key(2), y.shape, -8, 9).astype(dtype)
  (dx,) = jax.jit(vjp)(g)
  (dx_ref,) = vjp_ref(g)
  assert dx.dtype == dtype
  np.testing.assert_array_equal(
      np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32)
  )


def test_every_form_matches_the_models_at_the_paper_shapes():
  rows = layers.run(
      batch_size=1, dtypes=("float32",), repeats=1, log=lambda *_: None
  )
  assert {(r["layer"], r["form"]) for r in rows} == {
      ("pool", "reduce_window"),
      ("pool", "slice_max_pool"),
      ("lrn", "reduce_window"),
      ("lrn", "shifted_slices"),
      ("lrn", "banded_matmul"),
      ("conv1", "strided"),
      ("conv1", "space_to_depth"),
      *(
          (f"wgrad conv{i}", form)
          for i in range(1, 5)
          for form in ("xla", "im2col")
      ),
  }
  for r in rows:
    assert r["forward_s"] > 0
    if r["layer"] == "pool":
      assert r["gradient_difference"] == 0.0, r
    else:
      assert r["gradient_difference"] < 1e-5, r
