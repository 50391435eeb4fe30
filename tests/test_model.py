"""The model: shapes, parameter count, LRN, and equality with a reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import weights
from tests import helpers
from tests import reference

# Per-layer parameter shapes of PAPER.md §1 in the Caffe layout.
PAPER_SHAPES = {
    "conv1.weight": (96, 3, 11, 11), "conv1.bias": (96,),
    "conv2.weight": (256, 48, 5, 5), "conv2.bias": (256,),
    "conv3.weight": (384, 256, 3, 3), "conv3.bias": (384,),
    "conv4.weight": (384, 192, 3, 3), "conv4.bias": (384,),
    "conv5.weight": (256, 192, 3, 3), "conv5.bias": (256,),
    "fc6.weight": (4096, 9216), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "fc8.weight": (1000, 4096), "fc8.bias": (1000,),
}


def test_paper_parameter_count_and_shapes():
  shapes = model_lib.param_shapes(model_lib.default_config())
  assert model_lib.count_params(shapes) == 60_965_224
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  caffe = weights.to_caffe_layout(zeros)
  assert {k: v.shape for k, v in caffe.items()} == PAPER_SHAPES
  # Tower structure: every parameter but fc8's bias has a leading axis of 2.
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  for path, leaf in flat:
    name = jax.tree_util.keystr(path)
    if name == "['fc8']['bias']":
      assert leaf.shape == (1000,)
    else:
      assert leaf.shape[0] == 2, name


@pytest.mark.parametrize("image_size", [224, 227])
def test_spatial_sizes(image_size):
  sizes = model_lib.spatial_sizes(image_size)
  assert (sizes["conv1"], sizes["pool1"], sizes["pool2"], sizes["pool5"]) == (
      55, 27, 13, 6)
  # The compiled model agrees: fc6 sees 6*6*128 inputs per tower.
  config = model_lib.default_config()
  config.image_size = image_size
  shapes = model_lib.param_shapes(config)
  assert shapes["fc6"]["kernel"].shape == (2, 6 * 6 * 128, 4096)


def test_non_overlapping_pool_ablation_sizes():
  assert model_lib.spatial_sizes(224, 2, 2)["pool5"] == 6
  assert model_lib.spatial_sizes(224, 3, 2)["pool5"] == 6


@pytest.mark.parametrize("convention", ["paper", "caffe"])
def test_lrn_closed_form_with_channel_edges(convention):
  towers, per_tower = 2, 7
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, towers * per_tower)) * 4
  k, n, alpha, beta = 2.0, 5, 1e-2, 0.75  # large alpha: visible effect.
  got = model_lib.local_response_norm(x, towers, convention=convention, k=k,
                                      n=n, alpha=alpha, beta=beta)
  x_np = np.asarray(x, np.float64)
  scale = alpha / n if convention == "caffe" else alpha
  want = np.empty_like(x_np)
  for t in range(towers):
    for i in range(per_tower):
      lo, hi = max(0, i - 2), min(per_tower - 1, i + 2)
      s = np.sum(x_np[..., t * per_tower + lo:t * per_tower + hi + 1] ** 2,
                 axis=-1)
      want[..., t * per_tower + i] = (
          x_np[..., t * per_tower + i] / (k + scale * s) ** beta)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The edge channel 0 of tower 1 must not see tower 0's channels.
  y = x.at[..., per_tower - 1].set(100.0)
  got2 = model_lib.local_response_norm(y, towers, convention=convention, k=k,
                                       n=n, alpha=alpha, beta=beta)
  np.testing.assert_array_equal(got2[..., per_tower:], got[..., per_tower:])
  assert not np.allclose(got2[..., per_tower - 2], got[..., per_tower - 2])


def test_paper_init_statistics():
  params = model_lib.init_params(model_lib.default_config(),
                                 jax.random.key(0))
  for layer, bias in dict(conv1=0, conv2=1, conv3=0, conv4=1, conv5=1, fc6=1,
                          fc7=1, fc8=0).items():
    np.testing.assert_array_equal(params[layer]["bias"], bias)
    kernel = np.asarray(params[layer]["kernel"])
    assert abs(kernel.std() - 0.01) < 0.0005, layer
    assert abs(kernel.mean()) < 0.001, layer
  # Towers are initialized independently.
  assert not np.allclose(params["conv1"]["kernel"][0],
                         params["conv1"]["kernel"][1])


def test_caffe_init_option():
  config = helpers.tiny_model_config(init="caffe", fc_features=(256, 256))
  params = model_lib.init_params(config, jax.random.key(0))
  np.testing.assert_array_equal(params["fc6"]["bias"], np.float32(0.1))
  np.testing.assert_array_equal(params["conv2"]["bias"], np.float32(0.1))
  np.testing.assert_array_equal(params["conv3"]["bias"], 0.0)
  assert abs(np.asarray(params["fc7"]["kernel"]).std() - 0.005) < 0.0003


@functools.partial(jax.jit, static_argnames=("lrn", "pool"))
def _reference_logits_and_grads(w, images, labels, *, lrn, pool):
  """Reference logits and d(mean cross-entropy)/d(weights), Caffe layout."""

  def loss(w):
    logits = reference.logits(w, images, lrn=lrn, pool=pool)
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(log_probs[jnp.arange(len(labels)), labels]), logits

  grads, logits = jax.grad(loss, has_aux=True)(w)
  return logits, grads


@pytest.mark.parametrize("mesh_shape,variant", [
    (None, "paper"), ((1, 2), "paper"), ((2, 2), "paper"), ((2, 1), "paper"),
    ((1, 2), "caffe_lrn_pool2"),
])
def test_model_equals_independent_reference(mesh_shape, variant):
  """Logits, loss and gradients of the sharded model = the reference."""
  if variant == "paper":
    config = helpers.tiny_model_config()
  else:
    config = helpers.tiny_model_config(image_size=102, pool_window=2)
    config.lrn.update(convention="caffe", k=1.0, alpha=1e-3)
  mesh = None if mesh_shape is None else parallel.make_mesh(*mesh_shape)
  params = model_lib.init_params(config, jax.random.key(0), mesh)
  # Bigger-than-init weights so every layer matters numerically.
  params = jax.tree.map(lambda p: p * 5.0, params)
  size = config.image_size
  images = jax.random.normal(jax.random.key(1), (4, size, size, 3)) * 50
  labels = jnp.array([0, 3, 7, 9])
  apply = model_lib.make_apply(config, mesh)

  def loss(params, images):
    logits = apply(params, images)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  got_logits = jax.jit(apply)(params, images)
  got_grads = jax.jit(jax.grad(loss))(params, images)

  lrn = (config.lrn.convention, config.lrn.k, config.lrn.n, config.lrn.alpha,
         config.lrn.beta)
  pool = (config.pool_window, config.pool_stride)
  w = weights.to_caffe_layout(jax.device_get(params))
  want_logits, want_grads = _reference_logits_and_grads(
      w, images, labels, lrn=lrn, pool=pool)
  assert float(jnp.std(want_logits)) > 0.1  # A non-degenerate comparison.
  np.testing.assert_allclose(got_logits, want_logits, rtol=2e-4, atol=2e-4)
  got_caffe = weights.to_caffe_layout(got_grads)
  for name, want in want_grads.items():
    scale = float(np.abs(want).max())
    assert scale > 0, name
    np.testing.assert_allclose(got_caffe[name], want, rtol=1e-3,
                               atol=1e-4 * scale, err_msg=name)


def test_dropout_masks_equal_across_meshes_and_differ_per_tower():
  config = helpers.tiny_model_config(fc_features=(64, 64))
  images = jax.random.normal(jax.random.key(1), (4, 99, 99, 3))
  rng = jax.random.key(7)
  outs = {}
  for shape in [None, (1, 2)]:
    mesh = None if shape is None else parallel.make_mesh(*shape)
    params = model_lib.init_params(config, jax.random.key(0), mesh)
    apply = model_lib.make_apply(config, mesh)
    outs[shape] = np.asarray(jax.jit(
        lambda p, x: apply(p, x, rng, train=True))(params, images))
    eval_logits = jax.jit(apply)(params, images)
    assert not np.allclose(outs[shape], eval_logits)  # Dropout is applied.
  # Tower masks are keyed by the global tower index: same on 1 or 2 devices.
  np.testing.assert_allclose(outs[None], outs[(1, 2)], rtol=1e-5, atol=1e-6)


def test_dropout_mask_statistics_per_tower_and_shard():
  module = model_lib.AlexNet(towers_local=2, dropout_rate=0.5)
  x = jnp.ones((8, 2 * 500))
  y = module.apply({}, x, True, method=model_lib.AlexNet._dropout,
                   rngs={"dropout": jax.random.key(0)})
  kept = np.asarray(y) != 0
  assert 0.45 < kept.mean() < 0.55
  np.testing.assert_allclose(np.asarray(y)[kept], 2.0)  # Inverted scaling.
  # The two towers' masks differ.
  assert (kept[:, :500] != kept[:, 500:]).mean() > 0.3


def test_bfloat16_compute_keeps_float32_params_and_logits():
  config = helpers.tiny_model_config(dtype="bfloat16")
  params = model_lib.init_params(config, jax.random.key(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  images = jax.random.normal(jax.random.key(1), (2, 99, 99, 3)) * 50
  logits = jax.jit(model_lib.make_apply(config))(params, images)
  assert logits.dtype == jnp.float32
  f32 = jax.jit(model_lib.make_apply(helpers.tiny_model_config()))(
      params, images)
  np.testing.assert_allclose(logits, f32, rtol=0.05, atol=0.05)


def test_wrong_image_size_is_a_clear_error():
  config = helpers.tiny_model_config()
  params = model_lib.init_params(config, jax.random.key(0))
  with pytest.raises(ValueError, match=r"model.image_size"):
    model_lib.make_apply(config)(params, jnp.zeros((1, 98, 98, 3)))


def test_too_small_image_is_a_clear_error():
  with pytest.raises(ValueError, match=r"too small"):
    model_lib.build(helpers.tiny_model_config(image_size=30))
