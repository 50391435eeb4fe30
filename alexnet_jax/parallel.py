"""The data x model device mesh, partition specs, shard_map, and collectives.

The paper (§3.2, Figure 2) splits the network over two GPUs: each holds half
of every layer's kernels (one "tower"), and the GPUs talk only at the input of
conv3 and at the fully connected layers. Here the towers are laid over the
`model` axis of a device mesh, and ordinary data parallelism runs over the
`data` axis:

  model = 2: each device holds one tower;
  model = 1: one device holds both towers and computes them locally.

Both are the same program: the model code always works on the `towers_local`
towers a device holds, and the collectives below are over the `model` axis
(which is trivial when it has size 1). Every cross-device collective of the
forward pass is in this file, each commented with the paper's reason and the
bytes it moves.

Bytes per image per device, float32, paper sizes, for the two towers on two
devices (an all-gather or reduce-scatter of S bytes per device sends S bytes;
an all-reduce of S bytes sends S):

  layer  choice                           sent    alternative             sent
  conv3  all-gather pool2 (13x13x128)    86,528   reduce-scatter partial 129,792
                                                  conv3 outputs (13x13x192)
  fc6    reduce-scatter partial fc6       8,192   all-gather pool5        18,432
         outputs (2048 per tower)                 (6x6x128 per tower)
  fc7    all-gather fc6 (2048)            8,192   reduce-scatter partial   8,192
                                                  fc7 outputs (tie)
  fc8    all-reduce partial logits        4,000   all-gather fc7 + all-   10,192
         (1000)                                   gather logits (2048+500)

Total 106,912 bytes per image per device in the forward pass. The backward
pass moves 102,912: the transpose of an all-gather is a reduce-scatter of the
same size and vice versa, and fc8's sum needs none (its gradient, like the
logits, is already whole on both devices). Measured from the compiled
program by `python -m benchmarks.train_step`.

With `model.lrn.across_towers` (Caffe's bvlc_alexnet, whose LRN spans both
towers; the paper normalizes within each, §3.3) norm1 and norm2 also need
the n // 2 = 2 maps of the neighbouring tower nearest the tower boundary:
each device sends 2 maps (`neighbour_channels`, a collective-permute),
55 x 55 x 2 = 24,200 bytes at norm1 and 27 x 27 x 2 = 5,832 at norm2,
30,032 per image per device in the forward pass and as many in the
backward (a permute's transpose is the reverse permute); an all-gather of
the whole layers would send 580,800 + 373,248.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import os
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from alexnet_jax import cli

# Mesh axis names. Every PartitionSpec and collective in the project uses
# these constants.
DATA = "data"
MODEL = "model"

# Parameters without a leading tower axis: replicated on every device.
# fc8's bias is added after the cross-tower sum of the partial logits, so it
# belongs to neither tower.
REPLICATED_PARAMS = frozenset({("fc8", "bias")})


class MeshError(cli.UserError, ValueError):
  """An impossible mesh shape or batch size, with what to change."""


def make_mesh(
    data: int,
    model: int,
    *,
    num_towers: int = 2,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Makes the `data` x `model` mesh and validates its shape.

  Args:
    data: size of the data-parallel axis, or -1 for "all devices left over".
    model: size of the model axis: how many devices share the towers. Must
      divide `num_towers` (with the paper's two towers: 1 or 2).
    num_towers: towers in the model (2 in the paper).
    devices: devices to use; defaults to `jax.devices()` (all processes).

  Returns:
    A `jax.sharding.Mesh` with axes (DATA, MODEL).
  """
  devices = list(jax.devices() if devices is None else devices)
  if model < 1 or num_towers % model:
    choices = [m for m in range(1, num_towers + 1) if num_towers % m == 0]
    raise MeshError(
        f"mesh.model={model} is impossible: the model has {num_towers} "
        f"tower(s) and each device must hold a whole number of them. Use "
        f"mesh.model in {choices}."
    )
  if data == -1:
    if len(devices) % model:
      raise MeshError(
          f"mesh.data=-1 (use all devices) needs the {len(devices)} devices "
          f"to be a multiple of mesh.model={model}."
      )
    data = len(devices) // model
  if data < 1:
    raise MeshError(f"mesh.data={data} must be >= 1 (or -1 for all devices).")
  if data * model > len(devices):
    hint = ""
    if jax.default_backend() == "cpu":
      hint = (
          " On CPU, fake devices can be made before JAX starts with "
          "jax.config.update('jax_num_cpu_devices', N) or "
          "XLA_FLAGS=--xla_force_host_platform_device_count=N."
      )
    raise MeshError(
        f"mesh data x model = {data} x {model} needs {data * model} devices "
        f"but only {len(devices)} are available "
        f"({jax.default_backend()}).{hint}"
    )
  grid = np.asarray(devices[: data * model]).reshape(data, model)
  return Mesh(grid, (DATA, MODEL))


# XLA:CPU (jaxlib 0.10-0.12) hands convolutions, matmuls and reductions to
# YNNPACK by default. For AlexNet's convolutions and their gradients
# YNNPACK's kernels were 2-7x slower than XLA's own (Eigen) ones on the CPUs
# measured, and conv1's forward pass ran on one core of two
# (benchmarks/README.md, "YNNPACK"), so the model's programs keep only
# matmuls and reductions there: XLA_FLAGS'
# --xla_cpu_experimental_ynn_fusion_type=-individual_convolution, spelled
# as the option's enum values. A user's XLA_FLAGS setting of it wins.
_YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS = {
    _YNN_FUSION_TYPE: (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def compiler_options(mesh: Mesh | None) -> dict[str, str] | None:
  """XLA options for compiling the model's programs on `mesh`'s devices.

  `CPU_COMPILER_OPTIONS` on CPU (unless XLA_FLAGS sets the flag), none on
  other platforms. `mesh=None`: the default backend.
  """
  platform = (
      mesh.devices.flat[0].platform if mesh is not None else None
  ) or jax.default_backend()
  if platform != "cpu" or _YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
    return None
  return dict(CPU_COMPILER_OPTIONS)


def towers_per_device(mesh: Mesh | None, num_towers: int) -> int:
  """How many towers each device holds (2 without a mesh)."""
  if mesh is None:
    return num_towers
  return num_towers // mesh.shape[MODEL]


def tower_axis(mesh: Mesh | None) -> str | None:
  """The axis towers communicate over: None when one device holds them all.

  With mesh.model = 1 the model needs no collectives at all, so none are
  emitted (XLA would keep singleton-group ones otherwise).
  """
  if mesh is None or mesh.shape[MODEL] == 1:
    return None
  return MODEL


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Validates the global batch against the data axis; returns per-shard."""
  data = mesh.shape[DATA]
  if global_batch_size % data:
    raise MeshError(
        f"batch size {global_batch_size} is not divisible by mesh.data={data}"
        f"; use a batch size that is a multiple of {data}."
    )
  return global_batch_size // data


def param_specs(params: Any) -> Any:
  """PartitionSpecs for a parameter tree: towers over MODEL, the rest P()."""

  def spec(path, leaf):
    names = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
    if names[-2:] in REPLICATED_PARAMS:
      return P()
    # Leading axis = tower; everything else unsharded.
    return P(MODEL, *([None] * (np.ndim(leaf) - 1)))

  return jax.tree_util.tree_map_with_path(spec, params)


def named_shardings(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(
      lambda s: NamedSharding(mesh, s),
      specs,
      is_leaf=lambda x: isinstance(x, P),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of every per-example array: split over DATA, whole on MODEL."""
  return NamedSharding(mesh, P(DATA))


def process_data_shard(mesh: Mesh) -> tuple[int, int]:
  """(index, count) of the distinct slices of each batch processes read.

  Processes whose devices hold the same rows of the `data` axis must feed
  the same examples: with two processes forming the two towers (data 1 x
  model 2) both read the whole batch, so count = 1. With the towers inside
  a host and hosts along `data`, every process reads its own slice.
  """
  rows: dict[int, set[int]] = {}
  for row, devices in enumerate(mesh.devices):
    for device in devices:
      rows.setdefault(device.process_index, set()).add(row)
  groups = sorted({tuple(sorted(r)) for r in rows.values()})
  sizes = {len(g) for g in groups}
  covered = [row for g in groups for row in g]
  if len(sizes) != 1 or sorted(covered) != list(range(mesh.shape[DATA])):
    raise MeshError(
        f"the mesh's data rows are split unevenly over processes ({groups}); "
        "make every process hold the same number of whole data rows."
    )
  return groups.index(tuple(sorted(rows[jax.process_index()]))), len(groups)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a whole global batch, held by this one process, on the mesh.

  For single-process use (tests, notebooks); the input pipeline assembles
  global batches from per-process data instead.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def shard_model(
    local_apply: Callable[..., jax.Array],
    mesh: Mesh,
    params: Any,
    rng: jax.Array | None,
) -> Callable[..., jax.Array]:
  """Wraps `local_apply(params, images, rng) -> logits` in `jax.shard_map`.

  Each device gets its towers' parameters (param_specs), its data shard of
  the images (whole on the model axis: both towers see the image, §3.2), and
  the replicated rng. The logits leave summed over towers, so they are
  sharded over DATA only.
  """
  rng_spec = None if rng is None else P()
  if tower_axis(mesh) is None:
    # One device holds every tower: parameters are whole on each device.
    specs = jax.tree.map(lambda _: P(), params)
  else:
    specs = param_specs(params)
  return jax.shard_map(
      local_apply,
      mesh=mesh,
      in_specs=(specs, P(DATA), rng_spec),
      out_specs=P(DATA),
      check_vma=True,
  )


# ---------------------------------------------------------------------------
# Collectives. `axis_name=None` means "not inside shard_map": the module then
# holds every tower itself and the collective is the identity.
# ---------------------------------------------------------------------------


def tower_offset(axis_name: str | None, towers_local: int) -> jax.Array | int:
  """Global index of this device's first tower (0 outside shard_map)."""
  if axis_name is None:
    return 0
  return jax.lax.axis_index(axis_name) * towers_local


def shard_index(axis_name: str | None) -> jax.Array | int:
  """Index of this device's data shard (0 outside shard_map)."""
  if axis_name is None:
    return 0
  return jax.lax.axis_index(axis_name)


def gather_towers(x: jax.Array, axis_name: str | None, axis: int) -> jax.Array:
  """Concatenates every tower's `x` along `axis`, tower 0 first.

  Used at the input of conv3 (pool2 channels, §3.2 "the kernels of layer 3
  take input from all kernel maps in layer 2") and fc7 (fc6 units).
  """
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)


def scatter_tower_sum(
    x: jax.Array, axis_name: str | None, axis: int
) -> jax.Array:
  """Sums partial outputs over towers; each device keeps its towers' part.

  Used at fc6: each tower multiplies its own half of pool5 by its rows of the
  fc6 matrix, and the towers exchange the partial sums of the units they do
  not own (§3.2: fc6 reads both towers).
  """
  if axis_name is None:
    return x
  return jax.lax.psum_scatter(x, axis_name, scatter_dimension=axis, tiled=True)


def sum_towers(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Sums partial outputs over towers; every device gets the whole sum.

  Used at fc8: the 1000 logits read all of fc7 (§3.2).
  """
  if axis_name is None:
    return x
  return jax.lax.psum(x, axis_name)


def neighbour_channels(
    x: jax.Array, axis_name: str | None, before: int, after: int
) -> tuple[jax.Array, jax.Array]:
  """The channels next to this device's block in the whole channel axis.

  Returns (the last `before` channels of the previous device along
  `axis_name`, the first `after` channels of the next device); zeros where
  there is no such device (the ends of the channel axis), and zeros for
  both outside shard_map, where the device holds every channel. Used by
  LRN across towers (Caffe's, `model.lrn.across_towers`): each device sends
  `before` channels to its successor and `after` to its predecessor, two
  collective-permutes (2 + 2 maps with n = 5; bytes in the module
  docstring).
  """
  shape = x.shape[:-1]
  if axis_name is None:
    return (
        jax.numpy.zeros(shape + (before,), x.dtype),
        jax.numpy.zeros(shape + (after,), x.dtype),
    )
  size = jax.lax.axis_size(axis_name)

  def send(part, pairs):
    if not part.shape[-1]:
      return part
    # A device that receives nothing gets zeros (device 0 from its
    # predecessor, the last device from its successor).
    return jax.lax.ppermute(part, axis_name, pairs)

  return (
      send(
          x[..., x.shape[-1] - before :], [(i, i + 1) for i in range(size - 1)]
      ),
      send(x[..., :after], [(i + 1, i) for i in range(size - 1)]),
  )
