"""Config arguments: the paper's comparisons as named switches."""

import jax
import numpy as np
import pytest

from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import weights
from configs import demo
from configs import ilsvrc2010


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _changes(get_config, arg, base_arg=""):
  """{field: new value} that `arg` changes relative to `base_arg`."""
  base = _flat(get_config(base_arg).to_dict())
  new = _flat(get_config(arg).to_dict())
  assert new.keys() == base.keys()
  return {k: v for k, v in new.items() if v != base[k]}


# What each switch changes in the paper's config, exactly.
SWITCH_CHANGES = {
    "one_gpu": {
        "model.num_towers": 1,
        "model.conv_features": (48, 128, 192, 192, 256),
        "model.fc_features": (4096, 4096),
        "mesh.model": 1,
    },
    "no_lrn": {"model.lrn.enabled": False},
    "no_overlap": {"model.pool_window": 2},  # Stride is 2 already.
    "no_pca": {"pca_lighting_std": 0.0},
    "no_dropout": {"model.dropout_rate": 0.0},
    "tanh": {"model.activation": "tanh"},
    "no_conv4": {"model.remove_conv4": True},
}


def test_switches_change_exactly_what_the_paper_describes():
  assert set(SWITCH_CHANGES) == set(ilsvrc2010.SWITCHES)
  for switch, want in SWITCH_CHANGES.items():
    assert _changes(ilsvrc2010.get_config, switch) == want, switch
  # They combine.
  assert _changes(ilsvrc2010.get_config, "no_lrn,no_pca") == {
      **SWITCH_CHANGES["no_lrn"],
      **SWITCH_CHANGES["no_pca"],
  }


def test_paper_defaults():
  c = ilsvrc2010.get_config()
  assert c.model.dropout_scaling == "paper" and c.model.dropout_rate == 0.5
  assert c.model.activation == "relu" and c.model.lrn.enabled
  assert not c.model.remove_conv4
  assert (c.optim.schedule, c.num_epochs) == ("plateau", 90)


def test_one_gpu_net_of_footnote_2():
  """One tower: 48/128/192/192 kernels, conv5 256, fc 4096: 59,798,312."""
  config = ilsvrc2010.get_config("one_gpu")
  shapes = model_lib.param_shapes(config.model)
  assert model_lib.count_params(shapes) == 59_798_312
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  caffe = {
      k: v.shape
      for k, v in weights.to_caffe_layout(zeros).items()
      if k.endswith(".weight")
  }
  assert caffe == {
      "conv1.weight": (48, 3, 11, 11),
      "conv2.weight": (128, 48, 5, 5),
      "conv3.weight": (192, 128, 3, 3),
      "conv4.weight": (192, 192, 3, 3),
      "conv5.weight": (256, 192, 3, 3),
      "fc6.weight": (4096, 6 * 6 * 256),
      "fc7.weight": (4096, 4096),
      "fc8.weight": (1000, 4096),
  }
  assert config.mesh.model == 1


def test_no_conv4_removes_the_layer_from_the_parameters():
  shapes = model_lib.param_shapes(ilsvrc2010.get_config("no_conv4").model)
  assert "conv4" not in shapes
  assert shapes["conv5"]["kernel"].shape == (2, 3, 3, 192, 128)
  assert model_lib.count_params(shapes) == 60_965_224 - 2 * (
      3 * 3 * 192 * 192 + 192
  )


def test_no_overlap_keeps_the_spatial_sizes():
  config = ilsvrc2010.get_config("no_overlap").model
  assert (
      layers.spatial_sizes(
          config.image_size, config.pool_window, config.pool_stride
      )["pool5"]
      == 6
  )


def test_demo_takes_the_same_switches_with_smoke():
  for switch in ilsvrc2010.SWITCHES:
    assert _changes(demo.get_config, f"smoke,{switch}", "smoke"), switch
  # one_gpu at the demo's widths: per-tower conv1-conv4, totals elsewhere.
  c = demo.get_config("one_gpu")
  assert c.model.conv_features == (12, 32, 48, 48, 64)
  assert c.model.fc_features == (512, 512)
  assert (c.model.num_towers, c.mesh.model) == (1, 1)
  c = demo.get_config("smoke,one_gpu,no_lrn")
  assert c.model.conv_features == (4, 8, 8, 8, 16)
  assert c.model.fc_features == (32, 32) and not c.model.lrn.enabled
  # The demo's baseline keeps the paper's dropout; no_dropout removes it.
  assert demo.get_config().model.dropout_rate == 0.5
  assert demo.get_config("no_dropout").model.dropout_rate == 0.0


@pytest.mark.parametrize(
    "get_config,arg",
    [
        (ilsvrc2010.get_config, "no_lrn,nonsense"),
        (demo.get_config, "smoke,nonsense"),
        (demo.get_config, "bf16"),  # Not a demo argument.
    ],
)
def test_unknown_arguments_list_the_known_ones(get_config, arg):
  with pytest.raises(
      ValueError, match=r"unknown config argument.*known: " r"\[.*'no_lrn'"
  ):
    get_config(arg)


def test_one_tower_names_its_replacement():
  with pytest.raises(ValueError, match="replaced by one_gpu"):
    ilsvrc2010.get_config("one_tower")


# Every config a user can name, built and run for one training step at its
# full size (the paper's 61M parameters, 224 or 227 crops) on generated
# data of its shape: the arguments no other test trains with, the
# ILSVRC-2012 and Imagenette configs, and the paper's own (plateau).
FULL_SIZE = [
    ("ilsvrc2010", ""),
    ("ilsvrc2010", "caffe_init"),
    ("ilsvrc2010", "caffe_lrn"),
    ("ilsvrc2010", "bf16"),
    ("ilsvrc2010", "steps"),
    ("ilsvrc2010", "one_gpu"),
    ("ilsvrc2012", ""),
    ("imagenette", ""),
]


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """XLA's persistent cache for this module's identical programs.

  ilsvrc2010, its caffe_init and ilsvrc2012 compile the same train step
  (they differ in the initial values and the data set): compiled once.
  """
  options = {
      "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
      "jax_persistent_cache_min_compile_time_secs": 0.0,
      "jax_persistent_cache_min_entry_size_bytes": 0,
  }
  before = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  yield
  for name, value in before.items():
    jax.config.update(name, value)
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cache

  cache.reset_cache()  # Later tests compile without it, as before.


@pytest.mark.parametrize(
    "module,arg", FULL_SIZE, ids=[f"{m}:{a}" for m, a in FULL_SIZE]
)
def test_one_training_step_of_every_full_size_config(
    compilation_cache, module, arg
):
  del compilation_cache
  # pylint: disable=g-import-not-at-top
  import importlib
  from alexnet_jax import config_validation
  from alexnet_jax import parallel
  from alexnet_jax import steps

  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  config_validation.validate(config, jax.devices())
  mc = config.model
  assert mc.image_size == (227 if arg == "caffe_lrn" else 224)
  assert mc.num_classes == (10 if module == "imagenette" else 1000)
  mesh = parallel.make_mesh(1, config.mesh.model, num_towers=mc.num_towers)
  state, shardings = steps.create_train_state(
      config, jax.random.key(0), mesh, steps_per_epoch=100
  )
  assert model_lib.count_params(state.params) == (
      59_798_312
      if arg == "one_gpu"
      else 60_965_224 - 4096 * 990 - 990
      if module == "imagenette"
      else 60_965_224
  )
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {
          "image": rng.normal(
              0, 50, (2, mc.image_size, mc.image_size, 3)
          ).astype(np.float32),
          "label": rng.integers(0, mc.num_classes, 2).astype(np.int32),
      },
      mesh,
  )
  train_step = steps.make_train_step(config, mesh, shardings, 100)
  state, metrics = train_step(state, batch)
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  # Untrained: near chance; the config's first rate.
  assert 0 < metrics["loss"] < np.log(mc.num_classes) + 1.5, metrics
  assert metrics["learning_rate"] == pytest.approx(config.optim.learning_rate)
  assert all(
      np.isfinite(x).all()
      for x in jax.tree.leaves(jax.device_get(state.params))
  )
