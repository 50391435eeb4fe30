"""The profile names every layer's ops from the compiled program's op names.

The profile (benchmarks/op_profile.py) reads a layer from op names that
come from alexnet_jax/model.py (its conv modules and the fc matmuls' name
scopes). These tests compile the tiny model's train step and check that
every layer is found, forward and backward, and that a layer whose name
is lost is an error rather than time filed under another group.
"""

import jax
import pytest

from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from benchmarks import op_profile
from benchmarks import train_step
from tests import helpers

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def compiled_step_text(config, mesh_shape=(1, 2)):
  """(HLO text of the compiled train step, its layers, the kernel table)."""
  mesh = parallel.make_mesh(*mesh_shape)
  state, shardings = steps_lib.create_train_state(
      config, jax.random.key(0), mesh
  )
  step = steps_lib.make_train_step(config, mesh, shardings)
  batch = parallel.shard_batch(train_step.random_batch(config, 4), mesh)
  text = step.lower(state, batch).compile().as_text()
  kernels = op_profile.kernel_layers(
      config.model, parallel.towers_per_device(mesh, config.model.num_towers)
  )
  return text, tuple(state.params), kernels


@pytest.fixture(scope="module")
def two_towers():
  return compiled_step_text(helpers.tiny_config())


def test_every_layer_is_named_forward_and_backward(two_towers):
  text, layers, kernels = two_towers
  assert layers == LAYERS
  groups = set(op_profile.op_groups(text, 2, kernels).values())
  for layer in LAYERS:
    kind = "conv" if layer.startswith("conv") else "matmul"
    assert f"{kind} {layer} fwd" in groups, (layer, sorted(groups))
  for layer in ("conv2", "conv3", "conv4", "conv5"):  # Input gradients.
    assert f"conv {layer} bwd" in groups, (layer, sorted(groups))
  for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
    assert f"conv {layer} weight gradient" in groups, sorted(groups)
  for layer in ("fc6", "fc7", "fc8"):
    assert f"matmul {layer} bwd" in groups, sorted(groups)
  assert {"LRN fwd", "LRN bwd"} <= groups
  assert not {"conv ? weight gradient", "matmul (other)"} & groups
  op_profile.check_names(op_profile.op_groups(text, 2, kernels), layers)


@pytest.mark.parametrize("lost", ["fc7", "conv2"])
def test_a_layer_whose_name_is_lost_is_an_error(two_towers, lost):
  # As if model.py's scope or module for the layer were renamed.
  text, layers, kernels = two_towers
  text = text.replace(f"AlexNet/{lost}/", "AlexNet/renamed/")
  groups = op_profile.op_groups(text, 2, kernels)
  with pytest.raises(op_profile.ProfileError, match=rf"\['{lost}'\]"):
    op_profile.check_names(groups, layers)


def test_lrn_whose_name_is_lost_is_an_error(two_towers):
  text, layers, kernels = two_towers
  groups = op_profile.op_groups(text.replace("_lrn", "_norm"), 2, kernels)
  with pytest.raises(op_profile.ProfileError, match=r"\['LRN'\]"):
    op_profile.check_names(groups, layers)
  op_profile.check_names(groups, layers, lrn=False)


def test_a_model_without_conv4_or_lrn_is_named():
  text, layers, kernels = compiled_step_text(
      helpers.tiny_config(
          remove_conv4=True,
          lrn=dict(
              enabled=False,
              convention="paper",
              k=2.0,
              n=5,
              alpha=1e-4,
              beta=0.75,
          ),
      )
  )
  assert "conv4" not in layers
  op_profile.check_names(
      op_profile.op_groups(text, 2, kernels), layers, lrn=False
  )


def test_gpu_library_calls_are_convolutions_and_matmuls():
  """cuDNN convolutions and cuBLAS matmuls (custom calls on GPUs)."""
  meta = 'metadata={op_name="jit(train_step)/jvp()/shard_map/AlexNet/%s"}'
  conv = (
      "  %c = (f32[4,55,55,48]{3,2,1,0}, u8[0]{0}) custom-call(%x, %k), "
      'custom_call_target="__cudnn$convForward", '
      + meta % "conv1/conv_general_dilated"
  )
  gemm = (
      "  %g = (f32[4,16]{1,0}, s8[0]{0}) custom-call(%x, %k), "
      'custom_call_target="__cublas$gemm", '
      + meta % "fc6/bti,tio->bo/dot_general"
  )
  text = f"HloModule m\n\nENTRY %main {{\n{conv}\n{gemm}\n}}\n"
  assert op_profile.op_groups(text, 1) == {
      "c": "conv conv1 fwd",
      "g": "matmul fc6 fwd",
  }
