"""The model: shapes, parameter count, LRN, and equality with a reference."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import weights
from tests import helpers
from tests import reference

# Per-layer parameter shapes of the paper's network (§3.5, Figure 2) in the
# Caffe layout.
PAPER_SHAPES = {
    "conv1.weight": (96, 3, 11, 11),
    "conv1.bias": (96,),
    "conv2.weight": (256, 48, 5, 5),
    "conv2.bias": (256,),
    "conv3.weight": (384, 256, 3, 3),
    "conv3.bias": (384,),
    "conv4.weight": (384, 192, 3, 3),
    "conv4.bias": (384,),
    "conv5.weight": (256, 192, 3, 3),
    "conv5.bias": (256,),
    "fc6.weight": (4096, 9216),
    "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096),
    "fc7.bias": (4096,),
    "fc8.weight": (1000, 4096),
    "fc8.bias": (1000,),
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
  sizes = layers.spatial_sizes(image_size)
  assert (sizes["conv1"], sizes["pool1"], sizes["pool2"], sizes["pool5"]) == (
      55,
      27,
      13,
      6,
  )
  # The compiled model agrees: fc6 sees 6*6*128 inputs per tower.
  config = model_lib.default_config()
  config.image_size = image_size
  shapes = model_lib.param_shapes(config)
  assert shapes["fc6"]["kernel"].shape == (2, 6 * 6 * 128, 4096)


def test_non_overlapping_pool_ablation_sizes():
  assert layers.spatial_sizes(224, 2, 2)["pool5"] == 6
  assert layers.spatial_sizes(224, 3, 2)["pool5"] == 6


@pytest.mark.parametrize("convention", ["paper", "caffe"])
def test_lrn_closed_form_with_channel_edges(convention):
  towers, per_tower = 2, 7
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, towers * per_tower)) * 4
  k, n, alpha, beta = 2.0, 5, 1e-2, 0.75  # large alpha: visible effect.
  got = layers.local_response_norm(
      x, towers, convention=convention, k=k, n=n, alpha=alpha, beta=beta
  )
  x_np = np.asarray(x, np.float64)
  scale = alpha / n if convention == "caffe" else alpha
  want = np.empty_like(x_np)
  for t in range(towers):
    for i in range(per_tower):
      lo, hi = max(0, i - 2), min(per_tower - 1, i + 2)
      s = np.sum(
          x_np[..., t * per_tower + lo : t * per_tower + hi + 1] ** 2, axis=-1
      )
      want[..., t * per_tower + i] = (
          x_np[..., t * per_tower + i] / (k + scale * s) ** beta
      )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The edge channel 0 of tower 1 must not see tower 0's channels.
  y = x.at[..., per_tower - 1].set(100.0)
  got2 = layers.local_response_norm(
      y, towers, convention=convention, k=k, n=n, alpha=alpha, beta=beta
  )
  np.testing.assert_array_equal(got2[..., per_tower:], got[..., per_tower:])
  assert not np.allclose(got2[..., per_tower - 2], got[..., per_tower - 2])


@pytest.mark.parametrize("n", [5, 4])
def test_lrn_across_towers_on_one_and_two_devices(n):
  """`across_towers`: the window crosses the tower boundary, as Caffe's LRN
  over all channels (the reference's band matrix), whether one device holds
  both towers or each device one (the boundary maps sent between them)."""
  towers, per_tower = 2, 7
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, towers * per_tower)) * 4
  lrn = dict(convention="caffe", k=1.0, n=n, alpha=1e-1, beta=0.75)
  want = reference.lrn_across_channels(
      jnp.transpose(x, (0, 3, 1, 2)),
      lrn["k"],
      n,
      lrn["alpha"],
      lrn["beta"],
      lrn["convention"],
  ).transpose(0, 2, 3, 1)
  one = layers.local_response_norm(x, towers, across_towers=True, **lrn)
  np.testing.assert_allclose(one, want, rtol=1e-5)
  mesh = parallel.make_mesh(1, 2)
  two = jax.jit(
      jax.shard_map(
          lambda x: layers.local_response_norm(
              x, 1, across_towers=True, axis_name=parallel.MODEL, **lrn
          ),
          mesh=mesh,
          in_specs=parallel.P(None, None, None, parallel.MODEL),
          out_specs=parallel.P(None, None, None, parallel.MODEL),
      )
  )(x)
  np.testing.assert_allclose(two, want, rtol=1e-5)
  # Not the per-tower LRN: the maps at the boundary differ, the rest not.
  within = layers.local_response_norm(x, towers, **lrn)
  differ = ~np.isclose(within, want, rtol=1e-5).all(axis=(0, 1, 2))
  # Window i - n//2 .. i + n - 1 - n//2: maps 5-8 for n = 5, 6-8 for n = 4.
  boundary = np.arange(per_tower - (n - 1 - n // 2), per_tower + n // 2)
  np.testing.assert_array_equal(np.flatnonzero(differ), boundary)


def test_paper_init_statistics():
  params = model_lib.init_params(model_lib.default_config(), jax.random.key(0))
  for layer, bias in dict(
      conv1=0, conv2=1, conv3=0, conv4=1, conv5=1, fc6=1, fc7=1, fc8=0
  ).items():
    np.testing.assert_array_equal(params[layer]["bias"], bias)
    kernel = np.asarray(params[layer]["kernel"])
    assert abs(kernel.std() - 0.01) < 0.0005, layer
    assert abs(kernel.mean()) < 0.001, layer
  # Towers are initialized independently.
  assert not np.allclose(
      params["conv1"]["kernel"][0], params["conv1"]["kernel"][1]
  )


def test_caffe_init_option():
  config = helpers.tiny_model_config(init="caffe", fc_features=(256, 256))
  params = model_lib.init_params(config, jax.random.key(0))
  np.testing.assert_array_equal(params["fc6"]["bias"], np.float32(0.1))
  np.testing.assert_array_equal(params["conv2"]["bias"], np.float32(0.1))
  np.testing.assert_array_equal(params["conv3"]["bias"], 0.0)
  assert abs(np.asarray(params["fc7"]["kernel"]).std() - 0.005) < 0.0003


def test_module_reads_its_settings_from_the_config():
  """One source: the module's only settings field is the model config."""
  fields = [
      f.name
      for f in dataclasses.fields(model_lib.AlexNet)
      if f.name not in ("parent", "name")
  ]
  assert fields == ["config", "towers_local", "model_axis", "data_axis"]
  config = helpers.tiny_model_config(activation="tanh", pool_window=2)
  module = model_lib.build(config)
  assert module.config == model_lib.settings(config)
  assert module.config.activation == "tanh"
  assert module.config.pool_window == 2
  assert module.towers_local == 2


def test_settings_complete_an_old_config():
  """A workdir's config.json from before a field existed: the values its
  runs used (ReLU, LRN, conv4, inverted dropout)."""
  config = helpers.tiny_model_config()
  for name in (
      "activation",
      "dropout_scaling",
      "remove_conv4",
      "init_scale_to_width",
  ):
    del config[name]
  del config.lrn["enabled"]
  complete = model_lib.settings(config)
  assert (
      complete.activation,
      complete.dropout_scaling,
      complete.remove_conv4,
      complete.init_scale_to_width,
      complete.lrn.enabled,
  ) == ("relu", "inverted", False, False, True)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(init_scale_to_width=True),
        dict(init_scale_to_width=True, remove_conv4=True, init="caffe"),
    ],
)
def test_module_init_and_init_params_agree(overrides):
  """`AlexNet.init` and `init_params` (the program's) give the same tree,
  shapes, dtypes and biases, and kernels of the same std (`layer_init`).

  They draw from different streams (one per parameter vs one for all), so
  kernel values differ; their distributions must not.
  """
  config = helpers.tiny_model_config(**overrides)
  images = jnp.zeros((1, 99, 99, 3))
  # An rbg key: XLA:CPU compiles threefry in this program for ~20 s.
  module_params = model_lib.build(config).init(
      jax.random.key(0, impl="rbg"), images
  )["params"]
  program_params = model_lib.init_params(config, jax.random.key(0))
  assert jax.tree.structure(module_params) == jax.tree.structure(program_params)
  expected = model_lib.layer_init(model_lib.settings(config))
  assert sorted(expected) == sorted(program_params)
  for name, (std, bias) in expected.items():
    for params in (module_params, program_params):
      layer = jax.tree.map(np.asarray, params[name])
      assert layer["kernel"].shape == program_params[name]["kernel"].shape
      assert layer["kernel"].dtype == layer["bias"].dtype == np.float32
      np.testing.assert_array_equal(layer["bias"], np.float32(bias))
      # At least 320 values per kernel: the std is within 15%.
      assert abs(layer["kernel"].std() / std - 1) < 0.15, (name, overrides)
  if overrides.get("init_scale_to_width"):
    # Not the paper's std: fc6's fan-in is 2 x 6 x 6 x 128 in the paper and
    # 2 x 2 x 2 x 8 here, a factor sqrt(9216 / 64) = 12 on both paths.
    paper_std = 0.005 if overrides.get("init") == "caffe" else 0.01
    assert expected["fc6"][0] == pytest.approx(12 * paper_std)


def _reference_options(config):
  """reference.logits keyword arguments for a model config (hashable)."""
  lrn = (
      (
          config.lrn.convention,
          config.lrn.k,
          config.lrn.n,
          config.lrn.alpha,
          config.lrn.beta,
      )
      if config.lrn.enabled
      else None
  )
  return tuple(
      dict(
          towers=config.num_towers,
          lrn=lrn,
          pool=(config.pool_window, config.pool_stride),
          activation=config.activation,
          dropout_rate=config.dropout_rate,
          dropout_scaling=config.dropout_scaling,
          lrn_across_towers=config.lrn.across_towers,
      ).items()
  )


@functools.partial(jax.jit, static_argnames=("options",))
def _reference_logits_and_grads(w, images, labels, *, options):
  """Reference logits and d(mean cross-entropy)/d(weights), Caffe layout."""

  def loss(w):
    logits = reference.logits(w, images, **dict(options))
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(log_probs[jnp.arange(len(labels)), labels]), logits

  grads, logits = jax.grad(loss, has_aux=True)(w)
  return logits, grads


def _variant_config(variant):
  if variant == "paper":
    return helpers.tiny_model_config()
  if variant == "caffe_lrn_pool2":
    config = helpers.tiny_model_config(image_size=102, pool_window=2)
    config.lrn.update(convention="caffe", k=1.0, alpha=1e-3)
    return config
  if variant == "caffe_lrn_across_towers":  # bvlc_alexnet's LRN.
    config = helpers.tiny_model_config()
    config.lrn.update(convention="caffe", k=1.0, alpha=1e-3, across_towers=True)
    return config
  if variant == "tanh_no_lrn_no_conv4_inverted":
    # Caffe's smaller biases: the paper's biases of 1 (x 5 below) would
    # saturate tanh and leave gradients of ~1e-20.
    config = helpers.tiny_model_config(
        activation="tanh",
        remove_conv4=True,
        dropout_scaling="inverted",
        init="caffe",
    )
    config.lrn.enabled = False
    return config
  assert variant == "one_gpu"  # One tower, conv5 and fc at 2-tower totals.
  return helpers.tiny_model_config(
      num_towers=1, conv_features=(6, 8, 12, 12, 16), fc_features=(32, 32)
  )


@pytest.mark.parametrize(
    "mesh_shape,variant",
    [
        (None, "paper"),
        ((1, 2), "paper"),
        ((2, 2), "paper"),
        ((2, 1), "paper"),
        ((1, 2), "caffe_lrn_pool2"),
        ((1, 1), "caffe_lrn_across_towers"),
        ((1, 2), "caffe_lrn_across_towers"),
        ((1, 2), "tanh_no_lrn_no_conv4_inverted"),
        ((2, 1), "one_gpu"),
    ],
)
def test_model_equals_independent_reference(mesh_shape, variant):
  """Logits, loss and gradients of the sharded model = the reference.

  At test time (train=False): dropout is the paper's x 0.5 (or nothing for
  inverted dropout) in both.
  """
  config = _variant_config(variant)
  mesh = None if mesh_shape is None else parallel.make_mesh(*mesh_shape)
  params = model_lib.init_params(config, jax.random.key(0), mesh)
  # Bigger-than-init weights so every layer matters numerically.
  params = jax.tree.map(lambda p: p * 5.0, params)
  size = config.image_size
  # Mean-subtracted pixels are ~50; tanh wants inputs that do not saturate.
  gain = 1.0 if config.activation == "tanh" else 50.0
  images = jax.random.normal(jax.random.key(1), (4, size, size, 3)) * gain
  labels = jnp.array([0, 3, 7, 9])
  apply = model_lib.make_apply(config, mesh)

  def loss(params, images):
    logits = apply(params, images)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

  # One program for both (XLA:CPU compiles each for ~3 s).
  got_grads, got_logits = jax.jit(jax.grad(loss, has_aux=True))(params, images)

  w = weights.to_caffe_layout(jax.device_get(params))
  assert ("conv4.weight" in w) != config.remove_conv4
  want_logits, want_grads = _reference_logits_and_grads(
      w, images, labels, options=_reference_options(config)
  )
  assert float(jnp.std(want_logits)) > 0.1  # A non-degenerate comparison.
  np.testing.assert_allclose(got_logits, want_logits, rtol=2e-4, atol=2e-4)
  got_caffe = weights.to_caffe_layout(got_grads)
  for name, want in want_grads.items():
    scale = float(np.abs(want).max())
    assert scale > 0, name
    np.testing.assert_allclose(
        got_caffe[name], want, rtol=1e-3, atol=1e-4 * scale, err_msg=name
    )


def test_dropout_masks_equal_across_meshes_and_differ_per_tower():
  config = helpers.tiny_model_config(fc_features=(64, 64))
  images = jax.random.normal(jax.random.key(1), (4, 99, 99, 3))
  rng = jax.random.key(7)
  outs = {}
  for shape in [None, (1, 2)]:
    mesh = None if shape is None else parallel.make_mesh(*shape)
    params = model_lib.init_params(config, jax.random.key(0), mesh)
    apply = model_lib.make_apply(config, mesh)
    outs[shape] = np.asarray(
        jax.jit(lambda p, x: apply(p, x, rng, train=True))(params, images)
    )
    eval_logits = jax.jit(apply)(params, images)
    assert not np.allclose(outs[shape], eval_logits)  # Dropout is applied.
  # Tower masks are keyed by the global tower index: same on 1 or 2 devices.
  np.testing.assert_allclose(outs[None], outs[(1, 2)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "scaling,kept_value,test_factor",
    [("paper", 1.0, 0.5), ("inverted", 2.0, 1.0)],
)
def test_dropout_training_and_test_outputs(scaling, kept_value, test_factor):
  """§4.2: training zeroes outputs unscaled, test multiplies by 0.5."""
  module = model_lib.build(
      helpers.tiny_model_config(dropout_rate=0.5, dropout_scaling=scaling)
  )
  x = jnp.ones((8, 2 * 500)) * 3.0
  y = module.apply(
      {},
      x,
      True,
      method=model_lib.AlexNet._dropout,
      rngs={"dropout": jax.random.key(0)},
  )
  kept = np.asarray(y) != 0
  assert 0.45 < kept.mean() < 0.55
  np.testing.assert_allclose(np.asarray(y)[kept], 3.0 * kept_value)
  # The two towers' masks differ.
  assert (kept[:, :500] != kept[:, 500:]).mean() > 0.3
  # Test time: every output, times 0.5 (paper) or 1 (inverted).
  y = module.apply({}, x, False, method=model_lib.AlexNet._dropout)
  np.testing.assert_array_equal(y, 3.0 * test_factor)


def test_paper_dropout_at_test_time_is_inverted_with_halved_weights():
  """x 0.5 after fc6 and fc7 at test time = halving fc7's and fc8's weights.

  Checks the whole model's eval path (as used by evaluation and weights)
  applies the factor after both layers, on two towers over two devices.
  """
  paper = helpers.tiny_model_config()
  inverted = helpers.tiny_model_config(dropout_scaling="inverted")
  mesh = parallel.make_mesh(1, 2)
  params = jax.tree.map(
      lambda p: p * 5.0, model_lib.init_params(paper, jax.random.key(0), mesh)
  )
  halved = {
      name: dict(layer, kernel=layer["kernel"] * 0.5)
      if name in ("fc7", "fc8")
      else layer
      for name, layer in params.items()
  }
  images = jax.random.normal(jax.random.key(1), (4, 99, 99, 3)) * 50
  got = jax.jit(model_lib.make_apply(paper, mesh))(params, images)
  want = jax.jit(model_lib.make_apply(inverted, mesh))(halved, images)
  assert float(jnp.std(want)) > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "scaling,activation",
    [("paper", "relu"), ("inverted", "relu"), ("inverted", "tanh")],
)
def test_training_pass_equals_reference_with_the_models_masks(
    scaling, activation
):
  """A train=True pass = the reference given the masks the model drew.

  Exactly two dropout layers (not after fc8), each after its nonlinearity:
  with ReLU and 0/1 masks the order would not matter, but tanh(2x) is not
  2 tanh(x), so the inverted tanh case fails for dropout placed before it.
  """
  tanh = activation == "tanh"
  config = helpers.tiny_model_config(
      dropout_scaling=scaling,
      fc_features=(64, 64),
      activation=activation,
      init="caffe" if tanh else "paper",
  )
  params = jax.tree.map(
      lambda p: p * 5.0, model_lib.init_params(config, jax.random.key(0))
  )
  # Mean-subtracted pixels are ~50; tanh wants inputs that do not saturate.
  images = jax.random.normal(jax.random.key(1), (4, 99, 99, 3)) * (
      1.0 if tanh else 50.0
  )
  module = model_lib.build(config)

  def forward(params, images):
    seen = []  # (input, output) of each dropout layer.

    def record(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if context.method_name == "_dropout":
        seen.append((args[0], y))
      return y

    with nn.intercept_methods(record):
      logits = module.apply(
          {"params": params},
          images,
          train=True,
          rngs={"dropout": jax.random.key(2)},
      )
    return logits, seen

  got, seen = jax.jit(forward)(params, images)
  masks = []
  for x, y in jax.device_get(seen):
    kept = (y != 0) | (x == 0)
    assert 0.3 < kept.mean() < 0.8
    masks.append(kept.astype(np.float32))
  assert len(masks) == 2
  w = weights.to_caffe_layout(params)
  want = jax.jit(
      functools.partial(reference.logits, **dict(_reference_options(config)))
  )(w, images, dropout_masks=masks)
  assert float(jnp.std(want)) > 0.1
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  config = helpers.tiny_model_config(dtype="bfloat16")
  params = model_lib.init_params(config, jax.random.key(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  # He-scaled weights and no biases: every layer passes its input's scale
  # on, so the logits are O(1) and depend on every layer (at the paper's
  # init they are below 0.1, and anything small would pass a loose check).
  # Built in numpy: eager JAX ops would each compile.
  rng = np.random.default_rng(3)
  params = {
      name: {
          "kernel": (
              rng.normal(size=p["kernel"].shape)
              * np.sqrt(2.0 / np.prod(p["kernel"].shape[1:-1]))
          ).astype(np.float32),
          "bias": np.zeros(p["bias"].shape, np.float32),
      }
      for name, p in params.items()
  }
  images = (rng.normal(size=(4, 99, 99, 3)) * 50).astype(np.float32)
  bf16 = jax.jit(model_lib.make_apply(config))
  f32 = jax.jit(model_lib.make_apply(helpers.tiny_model_config()))
  logits = bf16(params, images)
  assert logits.dtype == jnp.float32
  want = np.asarray(f32(params, images))
  scale = float(want.std())
  assert scale > 1.0
  # bfloat16 keeps 8 bits of mantissa: a few percent of the logits' scale.
  tolerance = 0.05 * scale
  np.testing.assert_allclose(logits, want, rtol=0, atol=tolerance)
  # The tolerance is far below what a wrong computation changes: any one
  # layer zeroed, or an all-zero image, moves the logits well beyond it.
  for layer in ("conv1", "conv3", "conv5", "fc7"):
    broken = dict(params)
    broken[layer] = {k: np.zeros_like(v) for k, v in params[layer].items()}
    assert np.abs(f32(broken, images) - want).max() > 4 * tolerance, layer
  assert np.abs(f32(params, np.zeros_like(images)) - want).max() > (
      4 * tolerance
  )


def test_wrong_image_size_is_a_clear_error():
  config = helpers.tiny_model_config()
  params = model_lib.init_params(config, jax.random.key(0))
  with pytest.raises(ValueError, match=r"model.image_size"):
    model_lib.make_apply(config)(params, jnp.zeros((1, 98, 98, 3)))


def test_too_small_image_is_a_clear_error():
  with pytest.raises(ValueError, match=r"too small"):
    model_lib.build(helpers.tiny_model_config(image_size=30))
