"""npz weight interchange in the Caffe bvlc_alexnet layout, and the
safetensors export for PyTorch."""

import jax
import numpy as np
import pytest
from safetensors import numpy as st_numpy
from safetensors import safe_open

from alexnet_jax import model as model_lib
from alexnet_jax import weights
from configs import ilsvrc2012
from tests import helpers
from tests import reference


@pytest.fixture(scope="module")
def params():
  return jax.device_get(
      model_lib.init_params(helpers.tiny_model_config(), jax.random.key(0))
  )


@pytest.mark.parametrize("channels", ["rgb", "bgr"])
def test_round_trip_is_exact(tmp_path, params, channels):
  path = tmp_path / "w.npz"
  weights.export_npz(path, params, input_channels=channels)
  back = weights.import_npz(path, params, input_channels=channels)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_layout_matches_caffe_conventions(params):
  w = weights.to_caffe_layout(params)
  # conv2 is grouped: [out, in / 2, kh, kw], tower 0's kernels first.
  k2 = np.asarray(params["conv2"]["kernel"])  # [T, kh, kw, I, O]
  np.testing.assert_array_equal(
      w["conv2.weight"][8 + 3, 5, 1, 2], k2[1, 1, 2, 5, 3]
  )
  # fc6 input order: pool5 as (c, h, w), tower 0's 8 channels first.
  # Tower 1, channel 2, h=1, w=0 -> column (8 + 2) * 4 + 1 * 2 + 0.
  k6 = np.asarray(params["fc6"]["kernel"])  # [T, (h, w, c), O]
  row = (1 * 2 + 0) * 8 + 2
  np.testing.assert_array_equal(
      w["fc6.weight"][:, (8 + 2) * 4 + 2], k6[1, row, :]
  )
  # fc7: tower 1 owns output units 16..31.
  np.testing.assert_array_equal(
      w["fc7.weight"][16 + 4], np.asarray(params["fc7"]["kernel"])[1, :, 4]
  )
  # fc8: tower 1 owns input columns 16..31.
  np.testing.assert_array_equal(
      w["fc8.weight"][:, 16 + 4], np.asarray(params["fc8"]["kernel"])[1, 4]
  )


def test_bgr_reverses_conv1_input_channels(params):
  rgb = weights.to_caffe_layout(params)
  bgr = weights.to_caffe_layout(params, input_channels="bgr")
  np.testing.assert_array_equal(
      bgr["conv1.weight"], rgb["conv1.weight"][:, ::-1]
  )
  np.testing.assert_array_equal(bgr["conv2.weight"], rgb["conv2.weight"])


def test_wrong_key_or_shape_names_it(tmp_path, params):
  good = weights.to_caffe_layout(params)
  bad = dict(good)
  bad["fc9.weight"] = bad.pop("fc8.weight")
  np.savez(tmp_path / "bad_key.npz", **bad)
  with pytest.raises(
      weights.WeightsError,
      match=r"missing \['fc8.weight'\], unexpected " r"\['fc9.weight'\]",
  ):
    weights.import_npz(tmp_path / "bad_key.npz", params)
  bad = dict(good)
  bad["conv3.bias"] = np.zeros(5, np.float32)
  np.savez(tmp_path / "bad_shape.npz", **bad)
  with pytest.raises(
      weights.WeightsError,
      match=r"'conv3.bias' has shape \(5,\), the model needs " r"\(24,\)",
  ):
    weights.import_npz(tmp_path / "bad_shape.npz", params)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(
            num_towers=1, conv_features=(6, 8, 12, 12, 16), fc_features=(32, 32)
        ),  # The one-GPU net's shape.
        dict(remove_conv4=True),
    ],
)
def test_round_trip_of_the_ablation_nets(tmp_path, params, overrides):
  config = helpers.tiny_model_config(**overrides)
  ablated = jax.device_get(model_lib.init_params(config, jax.random.key(1)))
  path = tmp_path / "w.npz"
  weights.export_npz(path, ablated)
  back = weights.import_npz(path, ablated)
  jax.tree.map(np.testing.assert_array_equal, back, ablated)
  if config.num_towers == 1:  # Ungrouped: conv2 reads all 6 conv1 maps.
    assert weights.to_caffe_layout(ablated)["conv2.weight"].shape == (
        8,
        6,
        5,
        5,
    )
  else:  # A full model's file does not fit the net without conv4.
    weights.export_npz(tmp_path / "full.npz", params)
    with pytest.raises(
        weights.WeightsError,
        match=r"unexpected \['conv4.bias', 'conv4.weight'\]",
    ):
      weights.import_npz(tmp_path / "full.npz", ablated)


# --- safetensors for PyTorch (weights.SAFETENSORS). ---


@pytest.mark.parametrize("scaling", ["paper", "inverted"])
def test_safetensors_layout_runs_in_the_reference(tmp_path, scaling):
  """The exported file, read with safetensors' numpy API, run by the
  independent reference as PyTorch would run it (grouped convolutions,
  per-tower LRN in torch's alpha / size convention, inverted dropout:
  nothing at test time) gives our model's logits."""
  # Weights scaled to the width: with the paper's init, this narrow net's
  # logits hardly depend on the input (1e-8) and the test would see nothing.
  config = helpers.tiny_model_config(
      dropout_scaling=scaling, init_scale_to_width=True
  )
  params = jax.device_get(model_lib.init_params(config, jax.random.key(3)))
  path = tmp_path / "w.safetensors"
  # Written from BGR Caffe-layout arrays, as from a converted bvlc_alexnet:
  # the file holds RGB.
  weights.export_safetensors(
      path,
      weights.to_caffe_layout(params, input_channels="bgr"),
      config,
      input_channels="bgr",
  )
  tensors = st_numpy.load_file(str(path))
  with safe_open(str(path), framework="numpy") as f:
    metadata = f.metadata()
  assert sorted(tensors) == sorted(weights.to_caffe_layout(params))
  assert tensors["conv2.weight"].shape == (16, 6, 5, 5)  # groups=2.
  # torch.nn.LocalResponseNorm's alpha is divided by size: 5 * 1e-4 here.
  assert "LocalResponseNorm(size=5, alpha=0.0005, beta=0.75, k=2.0)" in (
      metadata["alexnet_jax.lrn"]
  )
  assert "within each of the 2 towers" in metadata["alexnet_jax.lrn"]
  assert metadata["alexnet_jax.groups"] == "conv2, conv4, conv5: 2"
  images = (
      np.random.default_rng(0).normal(0, 50, (2, 99, 99, 3)).astype(np.float32)
  )
  ours = jax.jit(model_lib.make_apply(config))(params, images)
  theirs = jax.jit(
      lambda w, x: reference.logits(
          w,
          x,
          towers=2,
          lrn=("caffe", 2.0, 5, 5e-4, 0.75),
          dropout_scaling="inverted",
      )
  )(tensors, images)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
  # The images' logits differ by far more than the tolerance.
  assert np.abs(ours[0] - ours[1]).max() > 1e-3
  folded = scaling == "paper"
  assert ("folded" in metadata["alexnet_jax.dropout"]) == folded
  np.testing.assert_array_equal(
      tensors["fc8.weight"],
      weights.to_caffe_layout(params)["fc8.weight"] * (0.5 if folded else 1),
  )


def test_export_command_line(tmp_path):
  """`python -m alexnet_jax.weights export` from a BGR .npz (Caffe's
  order) writes what export_safetensors writes from RGB parameters."""
  config = ilsvrc2012.get_config("caffe_reference")
  config.model.update(
      conv_features=(4, 4, 6, 6, 4), fc_features=(8, 8), num_classes=10
  )
  params = jax.device_get(
      model_lib.init_params(config.model, jax.random.key(4))
  )
  npz, out = tmp_path / "w.npz", tmp_path / "w.safetensors"
  weights.export_npz(npz, params, input_channels="bgr")
  proc = helpers.run_module(
      "alexnet_jax.weights",
      "export",
      f"--npz={npz}",
      "--input_channels=bgr",
      f"--out={out}",
      "--config=configs/ilsvrc2012.py:caffe_reference",
      "--config.model.conv_features=(4,4,6,6,4)",
      "--config.model.fc_features=(8,8)",
      "--config.model.num_classes=10",
  )
  assert proc.returncode == 0, proc.stderr
  expected, _ = weights.to_torch_layout(
      weights.to_caffe_layout(params), config.model
  )
  got = st_numpy.load_file(str(out))
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, key)
  # bvlc_alexnet's LRN spans both towers: the metadata says so.
  with safe_open(str(out), framework="numpy") as f:
    lrn = f.metadata()["alexnet_jax.lrn"]
  assert "over all channels of the layer (all towers)" in lrn, lrn
  assert "LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=1.0)" in lrn


def test_export_of_a_training_workdir(tmp_path):
  """Weights trained here leave through the command line: a workdir's
  latest checkpoint (trained on a 1x2 mesh) to safetensors and to .npz."""
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import checkpoint
  from alexnet_jax import parallel
  from alexnet_jax import steps
  # pylint: enable=g-import-not-at-top

  config = helpers.tiny_config(init_scale_to_width=True)
  state, _ = steps.create_train_state(
      config, jax.random.key(5), parallel.make_mesh(1, 2)
  )
  workdir = tmp_path / "workdir"
  with checkpoint.Checkpointer(workdir) as ckpt:
    assert ckpt.save(12, state, force=True)
  (workdir / "config.json").write_text(config.to_json_best_effort())
  params = jax.device_get(state.params)
  for out in (tmp_path / "w.safetensors", tmp_path / "w.npz"):
    proc = helpers.run_module(  # One CPU device.
        "alexnet_jax.weights", "export", f"--workdir={workdir}", f"--out={out}"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "restored step 12" in proc.stdout
  expected, _ = weights.to_torch_layout(
      weights.to_caffe_layout(params), config.model
  )
  got = st_numpy.load_file(str(tmp_path / "w.safetensors"))
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, key)
  jax.tree.map(
      np.testing.assert_array_equal,
      weights.import_npz(tmp_path / "w.npz", params),
      params,
  )
