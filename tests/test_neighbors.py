"""The paper's Figure 4: the features API and nearest neighbours.

The neighbors command on a trained workdir is tested in test_train.py (it
needs the smoke run there).
"""

import jax
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import neighbors
from alexnet_jax import parallel
from tests import helpers


def test_features_are_the_same_on_1x1_1x2_and_2x2_meshes_and_feed_fc8():
  config = helpers.tiny_model_config(dropout_rate=0.5)
  params = model_lib.init_params(config, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (4, 99, 99, 3))
  expected = jax.jit(model_lib.make_features(config))(params, images)
  assert expected.shape == (4, 2 * 16)
  assert (expected >= 0).all() and (expected > 0).any()  # After the ReLU.
  for data, model in ((1, 1), (1, 2), (2, 2)):
    mesh = parallel.make_mesh(data, model)
    placed = jax.device_put(
        params, parallel.named_shardings(mesh, parallel.param_specs(params))
    )
    batch = jax.device_put(images, parallel.batch_sharding(mesh))
    got = jax.jit(model_lib.make_features(config, mesh))(placed, batch)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # They are the last hidden layer: fc8 of them gives the eval logits (after
  # dropout's test-time scaling x 0.5 with the paper's dropout rule).
  logits = jax.jit(model_lib.make_apply(config))(params, images)
  scale = (
      1 - config.dropout_rate
      if config.get("dropout_scaling", "inverted") == "paper"
      else 1
  )
  k8 = params["fc8"]["kernel"].reshape(2 * 16, 10)
  np.testing.assert_allclose(
      scale * expected @ k8 + params["fc8"]["bias"],
      logits,
      rtol=1e-4,
      atol=1e-5,
  )


def test_nearest_and_label_agreement():
  base = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
  queries = np.array([[0.9, 0.1], [0.0, 2.0]])
  index = neighbors.nearest(queries, base, 3)
  np.testing.assert_array_equal(index, [[1, 3, 0], [2, 0, 1]])  # Stable ties.
  labels = np.array([0, 1, 2, 1])
  assert neighbors.label_agreement(np.array([1, 2]), labels, index) == (
      pytest.approx(3 / 6)
  )
