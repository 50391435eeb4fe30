"""npz weight interchange in the Caffe bvlc_alexnet layout."""

import jax
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import weights
from tests import helpers


@pytest.fixture(scope="module")
def params():
  return jax.device_get(model_lib.init_params(helpers.tiny_model_config(),
                                              jax.random.key(0)))


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
  np.testing.assert_array_equal(w["conv2.weight"][8 + 3, 5, 1, 2],
                                k2[1, 1, 2, 5, 3])
  # fc6 input order: pool5 as (c, h, w), tower 0's 8 channels first.
  # Tower 1, channel 2, h=1, w=0 -> column (8 + 2) * 4 + 1 * 2 + 0.
  k6 = np.asarray(params["fc6"]["kernel"])  # [T, (h, w, c), O]
  row = (1 * 2 + 0) * 8 + 2
  np.testing.assert_array_equal(w["fc6.weight"][:, (8 + 2) * 4 + 2],
                                k6[1, row, :])
  # fc7: tower 1 owns output units 16..31.
  np.testing.assert_array_equal(w["fc7.weight"][16 + 4],
                                np.asarray(params["fc7"]["kernel"])[1, :, 4])
  # fc8: tower 1 owns input columns 16..31.
  np.testing.assert_array_equal(w["fc8.weight"][:, 16 + 4],
                                np.asarray(params["fc8"]["kernel"])[1, 4])


def test_bgr_reverses_conv1_input_channels(params):
  rgb = weights.to_caffe_layout(params)
  bgr = weights.to_caffe_layout(params, input_channels="bgr")
  np.testing.assert_array_equal(bgr["conv1.weight"],
                                rgb["conv1.weight"][:, ::-1])
  np.testing.assert_array_equal(bgr["conv2.weight"], rgb["conv2.weight"])


def test_wrong_key_or_shape_names_it(tmp_path, params):
  good = weights.to_caffe_layout(params)
  bad = dict(good)
  bad["fc9.weight"] = bad.pop("fc8.weight")
  np.savez(tmp_path / "bad_key.npz", **bad)
  with pytest.raises(weights.WeightsError,
                     match=r"missing \['fc8.weight'\], unexpected "
                           r"\['fc9.weight'\]"):
    weights.import_npz(tmp_path / "bad_key.npz", params)
  bad = dict(good)
  bad["conv3.bias"] = np.zeros(5, np.float32)
  np.savez(tmp_path / "bad_shape.npz", **bad)
  with pytest.raises(weights.WeightsError,
                     match=r"'conv3.bias' has shape \(5,\), the model needs "
                           r"\(24,\)"):
    weights.import_npz(tmp_path / "bad_shape.npz", params)


@pytest.mark.parametrize("overrides", [
    dict(num_towers=1, conv_features=(6, 8, 12, 12, 16),
         fc_features=(32, 32)),  # The one-GPU net's shape.
    dict(remove_conv4=True),
])
def test_round_trip_of_the_ablation_nets(tmp_path, params, overrides):
  config = helpers.tiny_model_config(**overrides)
  ablated = jax.device_get(model_lib.init_params(config, jax.random.key(1)))
  path = tmp_path / "w.npz"
  weights.export_npz(path, ablated)
  back = weights.import_npz(path, ablated)
  jax.tree.map(np.testing.assert_array_equal, back, ablated)
  if config.num_towers == 1:  # Ungrouped: conv2 reads all 6 conv1 maps.
    assert weights.to_caffe_layout(ablated)["conv2.weight"].shape == (
        8, 6, 5, 5)
  else:  # A full model's file does not fit the net without conv4.
    weights.export_npz(tmp_path / "full.npz", params)
    with pytest.raises(weights.WeightsError,
                       match=r"unexpected \['conv4.bias', 'conv4.weight'\]"):
      weights.import_npz(tmp_path / "full.npz", ablated)
