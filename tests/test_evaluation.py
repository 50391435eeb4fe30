"""Evaluation as the program runs it: exact top-k, crops, ensembles, meshes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import eval_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import steps
from tests import helpers


def sorted_rank_errors(scores, labels, k=5):
  """Reference: sort each row, ties placed before the true class."""
  top1, topk = [], []
  for row, label in zip(np.asarray(scores), np.asarray(labels)):
    order = sorted(range(len(row)), key=lambda j: (-row[j], j == label))
    position = order.index(label)
    valid = np.all(np.isfinite(row))
    top1.append(float(position >= 1 or not valid))
    topk.append(float(position >= k or not valid))
  return np.array(top1), np.array(topk)


@pytest.mark.parametrize("kind", ["random", "tied", "underflow"])
def test_topk_errors_equal_a_sort(kind):
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(64, 20)).astype(np.float32)
  if kind == "tied":
    # Few distinct values: most true classes tie with others.
    scores = np.round(scores).astype(np.float32)
    scores[0] = 0.0  # A constant output is wrong.
  elif kind == "underflow":
    # float32 softmax of logits 100+ apart: most probabilities are 0.
    scores = np.asarray(jax.nn.softmax(jnp.asarray(scores * 200)))
    assert np.mean(scores == 0) > 0.5
  labels = rng.integers(0, 20, size=64)
  top1, top5 = jax.device_get(
      steps.topk_errors(jnp.asarray(scores), jnp.asarray(labels))
  )
  want1, want5 = sorted_rank_errors(scores, labels)
  np.testing.assert_array_equal(top1, want1)
  np.testing.assert_array_equal(top5, want5)
  if kind != "random":
    assert want5.sum() > 0  # Ties are actually exercised.


def constant_output_params(config, mesh, logits):
  """Parameters whose logits are `logits` for every image (fc8 = bias)."""
  params = model_lib.init_params(config.model, jax.random.key(0), mesh)
  params["fc8"]["kernel"] = jnp.zeros_like(params["fc8"]["kernel"])
  params["fc8"]["bias"] = jax.device_put(
      jnp.asarray(logits, jnp.float32), params["fc8"]["bias"].sharding
  )
  return params


def batches(config, mesh, images, labels, batch_size=4):
  """Global batches, the last one padded and masked like the pipeline's."""
  n = len(labels)
  for start in range(0, n, batch_size):
    image = images[start : start + batch_size]
    label = labels[start : start + batch_size]
    mask = np.ones(len(label), np.int32)
    pad = batch_size - len(label)
    if pad:
      image = np.concatenate([image, np.zeros_like(image[:pad])])
      label = np.concatenate([label, np.zeros_like(label[:pad])])
      mask = np.concatenate([mask, np.zeros(pad, np.int32)])
    yield parallel.shard_batch(
        {"image": image, "label": label, "mask": mask}, mesh
    )


def test_ties_and_underflow_count_as_errors_in_the_program():
  """A constant output is a top-1 error; a true class ranked 7th behind
  logits 150+ below the top is a top-5 error, not an underflow tie."""
  config = helpers.tiny_config()
  mesh = parallel.make_mesh(1, 2)
  images = np.zeros((3, 99, 99, 3), np.float32)
  constant = constant_output_params(config, mesh, np.zeros(10))
  result = eval_lib.evaluate(
      [(config, constant)], mesh, batches(config, mesh, images, np.arange(3))
  )
  assert result["top1_error"] == 1.0 and result["top5_error"] == 1.0
  logits = -150.0 * np.arange(10)  # Class j ranked j-th.
  deep = constant_output_params(config, mesh, logits)
  labels = np.array([0, 4, 6])
  result = eval_lib.evaluate(
      [(config, deep)], mesh, batches(config, mesh, images, labels)
  )
  assert result["top1_error"] == pytest.approx(2 / 3)
  assert result["top5_error"] == pytest.approx(1 / 3)  # Label 6 only.
  # The loss is exact too: -log softmax of the true class, not -log(1e-30).
  want = np.mean([-jax.nn.log_softmax(logits)[j] for j in labels])
  assert result["loss"] == pytest.approx(float(want), rel=1e-5)


@pytest.fixture(scope="module")
def ten_crop_case():
  config = helpers.tiny_config()
  rng = np.random.default_rng(3)
  crops = (rng.normal(size=(7, 10, 99, 99, 3)) * 50).astype(np.float32)
  labels = rng.integers(0, 10, size=7)
  members = []
  for seed, scale in ((0, 5.0), (1, 3.0)):
    params = model_lib.init_params(config.model, jax.random.key(seed))
    members.append(jax.device_get(jax.tree.map(lambda p: p * scale, params)))
  # Independent computation: logits of each crop, softmax in float64,
  # averaged over the crops and then over the members.
  apply = jax.jit(model_lib.make_apply(config.model))
  probs = []
  for params in members:
    logits = np.stack(
        [np.asarray(apply(params, crops[:, c]), np.float64) for c in range(10)]
    )
    p = np.exp(logits - logits.max(-1, keepdims=True))
    probs.append((p / p.sum(-1, keepdims=True)).mean(0))
  return config, crops, labels, members, probs


def expected(probs, labels):
  top1, top5 = sorted_rank_errors(probs, labels)
  loss = -np.log(probs[np.arange(len(labels)), labels]).mean()
  return top1.mean(), top5.mean(), loss


@pytest.mark.parametrize("mesh_shape", [(1, 1), (1, 2), (2, 2)])
def test_program_evaluation_equals_independent_computation(
    ten_crop_case, mesh_shape
):
  """10 crops, padded last batch, one model and an ensemble, any mesh."""
  config, crops, labels, members, probs = ten_crop_case
  mesh = parallel.make_mesh(*mesh_shape)
  shardings = parallel.named_shardings(mesh, parallel.param_specs(members[0]))
  placed = [jax.device_put(p, shardings) for p in members]
  for used, want_probs in (
      ([0], probs[0]),
      ([0, 1], (probs[0] + probs[1]) / 2),
  ):
    result = eval_lib.evaluate(
        [(config, placed[i]) for i in used],
        mesh,
        batches(config, mesh, crops, labels),
    )
    top1, top5, loss = expected(want_probs, labels)
    assert result["count"] == 7
    assert result["top1_error"] == pytest.approx(top1)
    assert result["top5_error"] == pytest.approx(top5)
    assert result["loss"] == pytest.approx(loss, rel=1e-4)


def test_evaluation_compiles_once_per_shape():
  """The program evaluates every epoch: the second pass compiles nothing."""
  config = helpers.tiny_config()
  mesh = parallel.make_mesh(1, 2)
  params = model_lib.init_params(config.model, jax.random.key(0), mesh)
  images = np.zeros((6, 99, 99, 3), np.float32)
  labels = np.arange(6)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, *_, **__: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration"
      else None
  )
  # Batches of 6: a shape no other test evaluates in this process.
  eval_lib.evaluate(
      [(config, params)],
      mesh,
      batches(config, mesh, images, labels, batch_size=6),
  )
  first = len(compiles)
  assert first > 0  # Positive control: the listener sees compiles.
  for _ in range(2):
    eval_lib.evaluate(
        [(config, params)],
        mesh,
        batches(config, mesh, images, labels, batch_size=6),
    )
  assert len(compiles) == first
