"""Train and eval steps on the mesh."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import steps
from benchmarks import hlo
from tests import helpers


def _batch(n=16, size=99, seed=1):
  images = jax.random.normal(jax.random.key(seed), (n, size, size, 3)) * 50
  return {"image": images, "label": jnp.arange(n) % 10}


def _train(config, mesh_shape, num_steps, batch):
  mesh = parallel.make_mesh(*mesh_shape)
  state, shardings = steps.create_train_state(config, jax.random.key(0), mesh)
  train_step = steps.make_train_step(config, mesh, shardings)
  batch = parallel.shard_batch(batch, mesh)
  losses = []
  for _ in range(num_steps):
    state, metrics = train_step(state, batch)
    losses.append(metrics["loss"])
  return state, np.asarray(jax.device_get(losses)), metrics


def test_a_few_steps_drive_the_loss_down_on_two_towers():
  # Dropout off and width-scaled init: a crisp memorization check of the
  # whole model-parallel forward/backward/update path.
  config = helpers.tiny_config(
      fc_features=(64, 64), dropout_rate=0.0, init_scale_to_width=True
  )
  state, losses, metrics = _train(config, (1, 2), 50, _batch())
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 50
  assert float(metrics["learning_rate"]) == pytest.approx(0.01)


def test_train_steps_with_dropout_equal_across_model_axis_sizes():
  """Two towers on two devices == both towers on one device, with dropout."""
  config = helpers.tiny_config(init_scale_to_width=True)
  batch = _batch(8)
  two, losses2, _ = _train(config, (1, 2), 3, batch)
  one, losses1, _ = _train(config, (1, 1), 3, batch)
  np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
      jax.device_get(two.params),
      jax.device_get(one.params),
  )


def test_state_is_sharded_like_the_params():
  config = helpers.tiny_config()
  mesh = parallel.make_mesh(2, 2)
  state, _ = steps.create_train_state(config, jax.random.key(0), mesh)
  velocity = state.opt_state.inner_state[2].trace
  assert velocity["conv1"]["kernel"].sharding.spec == parallel.P(
      "model", None, None, None, None
  )
  assert velocity["fc8"]["bias"].sharding.is_fully_replicated


def test_topk_errors():
  scores = jnp.array([[0.1, 0.5, 0.2, 0.05, 0.3, 0.0, 0.9]] * 3)
  top1, top5 = steps.topk_errors(scores, jnp.array([6, 0, 3]))
  np.testing.assert_array_equal(top1, [0.0, 1.0, 1.0])
  # Label 0 has 4 classes above it (in the top 5), label 3 has 5 (not).
  np.testing.assert_array_equal(top5, [0.0, 0.0, 1.0])
  top1, top5 = steps.topk_errors(
      scores.at[0, 2].set(jnp.nan), jnp.array([6, 0, 3])
  )
  np.testing.assert_array_equal(top1, [1.0, 1.0, 1.0])  # NaN is wrong.


def _ynn_convolutions(hlo_text: str) -> int:
  """Convolutions in the compiled program that XLA:CPU hands to YNNPACK
  (fusions of kind __ynn_fusion whose body holds a convolution)."""
  bodies = hlo.computations(hlo_text)
  return sum(
      1
      for line in hlo_text.splitlines()
      if "__ynn_fusion" in line
      and " convolution(" in bodies.get(hlo.called(line), "")
  )


def test_cpu_programs_compile_convolutions_without_ynnpack(monkeypatch):
  """The train and predict steps pass parallel.CPU_COMPILER_OPTIONS to XLA:
  no convolution goes to YNNPACK, XLA:CPU's default (measured slower), which
  a plain jit of the model still takes; XLA_FLAGS setting that flag wins."""
  config = helpers.tiny_config()
  mesh = parallel.make_mesh(1, 1)
  state, shardings = steps.create_train_state(config, jax.random.key(0), mesh)
  batch = parallel.shard_batch(_batch(4), mesh)
  programs = [
      steps.make_train_step(config, mesh, shardings).lower(state, batch),
      steps.make_predict(config.model, mesh).lower(
          state.params, batch["image"]
      ),
  ]
  for lowered in programs:
    assert _ynn_convolutions(lowered.compile().as_text()) == 0
  default = jax.jit(model_lib.make_apply(config.model, mesh))
  default = default.lower(state.params, batch["image"]).compile().as_text()
  # XLA's default takes some (this tiny model's smallest ones stay with
  # XLA): the count above can see them.
  assert _ynn_convolutions(default) > 0
  assert parallel.compiler_options(mesh) == parallel.CPU_COMPILER_OPTIONS
  monkeypatch.setenv(
      "XLA_FLAGS",
      os.environ.get("XLA_FLAGS", "")
      + " --xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
  )
  assert parallel.compiler_options(mesh) is None
  assert parallel.compiler_options(None) is None
