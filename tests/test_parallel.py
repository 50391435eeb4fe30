"""The mesh, its validation, and the collectives of the compiled program."""

import re

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from benchmarks import hlo
from tests import helpers


def compiled_forward(config, mesh_shape, batch):
  """The HLO text of the compiled forward pass on a data x model mesh."""
  mesh = parallel.make_mesh(*mesh_shape)
  params = model_lib.init_params(config, jax.random.key(0), mesh)
  size = config.image_size
  images = jax.ShapeDtypeStruct(
      (batch, size, size, 3),
      jnp.float32,
      sharding=parallel.batch_sharding(mesh),
  )
  return (
      jax.jit(model_lib.make_apply(config, mesh))
      .lower(params, images)
      .compile()
      .as_text()
  )


def compiled_collectives(config, mesh_shape, batch):
  """(op, result type, device groups) of each collective in the forward."""
  return [
      (c["op"], c["types"][0], c["groups"])
      for c in hlo.collectives(
          compiled_forward(config, mesh_shape, batch), mesh_shape
      )
  ]


@pytest.mark.parametrize("mesh_shape", [(1, 2), (2, 2)])
def test_forward_communicates_only_where_the_paper_does(mesh_shape):
  """Exactly 4 collectives, all within a tower pair: conv3, fc6, fc7, fc8.

  A change that adds communication anywhere else (or changes a collective's
  kind or size) fails here. Shapes are per device: batch per data shard B.
  """
  config = helpers.tiny_model_config()  # pool2 5x5, per tower 8 channels.
  data = mesh_shape[0]
  B = 4 // data
  got = compiled_collectives(config, mesh_shape, batch=4)
  groups = [[0, 1]] if data == 1 else [[0, 1], [2, 3]]
  assert got == [
      # conv3 input: both towers' pool2 maps, 5x5x(2x8).
      ("all-gather", f"f32[{B},5,5,16]", groups),
      # fc6: partial sums of all 2x16 units -> own 16.
      ("reduce-scatter", f"f32[{B},16]", groups),
      # fc7 input: all fc6 units.
      ("all-gather", f"f32[{B},32]", groups),
      # fc8: partial logits summed over towers.
      ("all-reduce", f"f32[{B},10]", groups),
  ], got


def test_paper_model_collective_sizes():
  """The paper's sizes (and so the byte counts in parallel.py's docstring)."""
  got = compiled_collectives(model_lib.default_config(), (1, 2), batch=1)
  assert [(op, t) for op, t, _ in got] == [
      ("all-gather", "f32[1,13,13,256]"),  # 128 channels sent per device.
      ("reduce-scatter", "f32[1,2048]"),
      ("all-gather", "f32[1,4096]"),
      ("all-reduce", "f32[1,1000]"),
  ]


def test_lrn_across_towers_collective_sizes():
  """The paper's sizes with Caffe's LRN: 55x55 and 27x27, 2 maps each way
  (the byte counts of parallel.py's docstring: each device sends one of
  each pair)."""
  config = model_lib.default_config()
  config.lrn.across_towers = True
  got = compiled_collectives(config, (1, 2), batch=1)
  assert sorted(t for op, t, _ in got if op == "collective-permute") == (
      ["f32[1,27,27,2]"] * 2 + ["f32[1,55,55,2]"] * 2
  )


def test_one_device_per_two_towers_has_no_collectives():
  """model=1: no collective at all, read without the parser too.

  The 1x2 and 2x2 tests above are the parser's positive control: the same
  reader finds the four collectives there.
  """
  text = compiled_forward(helpers.tiny_model_config(), (2, 1), 4)
  assert not [
      op
      for op in hlo.COLLECTIVE_OPS
      if f" {op}(" in text or f" {op}-start(" in text
  ]
  assert hlo.collectives(text, (2, 1)) == []


def _permute_pairs(text, name):
  """source_target_pairs of the collective-permute `name` in HLO text."""
  line = re.search(rf"%{re.escape(name)} = [^\n]*", text).group(0)
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", line).group(1)
  return [
      [int(i) for i in p.split(",")] for p in re.findall(r"\{?(\d+,\d+)", pairs)
  ]


@pytest.mark.parametrize("mesh_shape", [(1, 2), (2, 2), (2, 1)])
def test_lrn_across_towers_sends_the_boundary_maps(mesh_shape):
  """`lrn.across_towers` (Caffe's LRN) adds, at norm1 and norm2, one
  collective-permute each way between the two devices of a tower pair,
  n // 2 = 2 maps each; none when one device holds both towers."""
  config = helpers.tiny_model_config()  # conv1 23x23, pool1 11x11.
  config.lrn.across_towers = True
  text = compiled_forward(config, mesh_shape, batch=4)
  found = hlo.collectives(text, mesh_shape)
  if mesh_shape[1] == 1:
    assert found == []
    return
  data = mesh_shape[0]
  B = 4 // data
  right = [[0, 1]] if data == 1 else [[0, 1], [2, 3]]
  left = [[1, 0]] if data == 1 else [[1, 0], [3, 2]]
  permutes = [
      (c["types"][0], _permute_pairs(text, c["name"]))
      for c in found
      if c["op"] == "collective-permute"
  ]
  assert sorted(permutes) == sorted(
      [
          (f"f32[{B},23,23,2]", right),
          (f"f32[{B},23,23,2]", left),
          (f"f32[{B},11,11,2]", right),
          (f"f32[{B},11,11,2]", left),
      ]
  ), permutes
  # The paper's four collectives are unchanged.
  assert [
      (c["op"], c["types"][0]) for c in found if c["op"] != "collective-permute"
  ] == [
      ("all-gather", f"f32[{B},5,5,16]"),
      ("reduce-scatter", f"f32[{B},16]"),
      ("all-gather", f"f32[{B},32]"),
      ("all-reduce", f"f32[{B},10]"),
  ]


def test_mesh_shapes():
  mesh = parallel.make_mesh(2, 2)
  assert dict(mesh.shape) == {parallel.DATA: 2, parallel.MODEL: 2}
  assert dict(parallel.make_mesh(-1, 2).shape) == {"data": 2, "model": 2}
  assert dict(parallel.make_mesh(-1, 1).shape) == {"data": 4, "model": 1}


@pytest.mark.parametrize(
    "data,model,message",
    [
        (1, 3, r"mesh.model=3 is impossible.*mesh.model in \[1, 2\]"),
        (1, 0, r"mesh.model=0 is impossible"),
        (4, 2, r"needs 8 devices but only 4 are available"),
        (0, 2, r"mesh.data=0 must be >= 1"),
    ],
)
def test_bad_mesh_shapes_fail_with_a_clear_message(data, model, message):
  with pytest.raises(parallel.MeshError, match=message):
    parallel.make_mesh(data, model)


def test_batch_not_divisible_by_data_axis():
  mesh = parallel.make_mesh(2, 2)
  assert parallel.check_batch_size(128, mesh) == 64
  with pytest.raises(parallel.MeshError, match=r"batch size 5 .* mesh.data=2"):
    parallel.check_batch_size(5, mesh)


def test_param_shardings_hold_one_tower_per_device():
  mesh = parallel.make_mesh(1, 2)
  params = model_lib.init_params(
      helpers.tiny_model_config(), jax.random.key(0), mesh
  )
  kernel = params["conv2"]["kernel"]
  assert [s.data.shape[0] for s in kernel.addressable_shards] == [1, 1]
  assert [s.index[0] for s in kernel.addressable_shards] == [
      slice(0, 1),
      slice(1, 2),
  ]
  bias8 = params["fc8"]["bias"]
  assert bias8.sharding.is_fully_replicated
