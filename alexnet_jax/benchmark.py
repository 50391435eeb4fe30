r"""Train-step throughput, FLOPs, utilization and collective bytes of AlexNet.

A tool, not a test. For each mesh shape and dtype it times the train step of
the paper's full model (`model.default_config()`, 60,965,224 parameters, the
§5 optimizer) on a fixed random batch that is already on the devices:

  python -m alexnet_jax.benchmark [--batch_size=128[,256,...]]
      [--meshes=auto|1x1,1x2]
      [--dtypes=float32,bfloat16] [--steps=5] [--warmup=2] [--cpu_devices=2]
      [--config=configs/ilsvrc2010.py[:ARGS]] [--input] [--profile]
      [--interleave] [--json=FILE]

What it reports, per (mesh, dtype, batch size):
  * images/s: batch / median wall time of `--steps` steps after `--warmup`
    steps. Each step is blocked on (`jax.block_until_ready` on the new state
    and metrics) and timed on its own; no host transfer is in the loop. Also
    images per CPU-second of the whole process (the steadier figure on a
    machine shared with other jobs).
  * compile time: `jit(train_step).lower(...)` + `.compile()`, timed
    separately from the steps.
  * FLOPs per image: analytic (`analytic_flops`: 2 x multiply-adds of every
    conv and fc layer, forward; a training step counted as 3x forward) beside
    XLA's `compiled.cost_analysis()` of the train step and of the forward
    pass; achieved FLOP/s and model FLOP utilization (MFU) against the
    device's peak (`PEAK_TFLOPS`, vendor datasheet dense numbers) or, on
    CPU, against a measured float32 matmul rate on the same devices.
  * collective bytes per device per step, parsed from the compiled HLO
    (`hlo.collectives`) beside the analytic minimum of the two-tower
    scheme (`analytic_collective_bytes`).
  * peak device memory (`device.memory_stats()`; the CPU backend reports
    none, so it is None there) and XLA's compiled memory analysis.

`--interleave` compiles every case first and then times one step of each in
turn, so that on a machine shared with other jobs all cases see the same
load. Several batch sizes (`--batch_size=128,512,2048`) add the best batch per
(mesh, dtype) to the report; a batch that does not fit in device memory is
reported as such and the sweep goes on.

`--input` adds the input pipeline's training images/s on one core
(alexnet_jax/input_benchmark.py; needs TensorFlow, imported only then).
`--profile` traces two steps per case with `jax.profiler` and prints where
the time goes (conv / matmul per layer, LRN, pooling, collectives, copies).

On a CPU-only host `--cpu_devices=N` makes N fake CPU devices before JAX
starts (only the CPU backend is affected); the fake devices share the same
cores and XLA's one intra-op thread pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import collections
import functools
import glob
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import hlo
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib

# The paper's forward cost (§3, Figure 2: about 724 M multiply-adds).
PAPER_FORWARD_MACS = 724e6

# Dense (no structured sparsity) peak matmul rates in TFLOP/s from the
# vendors' datasheets: NVIDIA H100 / H200 / A100 datasheets; Google Cloud
# TPU system-architecture pages (v4, v5e, v5p, v6e). "float32" on NVIDIA is
# the non-tensor-core FP32 rate (JAX's default precision may instead use
# TF32 tensor cores for float32 matmuls: "tfloat32" is given for reference).
# TPUs run float32 matmuls as several bfloat16 passes; their only datasheet
# number is bfloat16, used for both dtypes. Matched against
# `device.device_kind`, first match wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", dict(bfloat16=756.0, float32=51.0, tfloat32=378.0)),
    ("H100", dict(bfloat16=989.0, float32=67.0, tfloat32=494.7)),  # SXM
    ("H200", dict(bfloat16=989.0, float32=67.0, tfloat32=494.7)),
    ("A100", dict(bfloat16=312.0, float32=19.5, tfloat32=156.0)),
    ("TPU v4", dict(bfloat16=275.0, float32=275.0)),
    ("TPU v5 lite", dict(bfloat16=197.0, float32=197.0)),  # v5e
    ("TPU v5e", dict(bfloat16=197.0, float32=197.0)),
    ("TPU v5", dict(bfloat16=459.0, float32=459.0)),  # v5p
    ("TPU v6 lite", dict(bfloat16=918.0, float32=918.0)),  # v6e (Trillium)
    ("TPU v6e", dict(bfloat16=918.0, float32=918.0)),
)

# ---------------------------------------------------------------------------
# Analytic FLOPs.
# ---------------------------------------------------------------------------


def forward_macs_per_image(config: ml_collections.ConfigDict
                           ) -> dict[str, int]:
  """Multiply-adds of each conv and fc layer for one image, forward.

  conv: H_out * W_out * C_out * (k * k * C_in_per_output), where
        C_in_per_output is what one output channel reads: all input channels
        for conv1 (the image) and conv3 (both towers), its own tower's for
        conv2, conv4 and conv5 (C_out and C_in summed over the towers);
  fc:   inputs * outputs.
  Biases, ReLU, LRN, pooling, dropout and softmax are not counted (they are
  about 1% more and not multiply-adds of the layer's weights).
  """
  towers = config.num_towers
  c1, c2, c3, c4, c5 = (towers * c for c in config.conv_features)
  f6, f7 = (towers * f for f in config.fc_features)
  sizes = model_lib.spatial_sizes(config.image_size, config.pool_window,
                                  config.pool_stride)

  def conv(size, out, kernel, inputs):
    return size * size * out * kernel * kernel * inputs

  macs = {
      "conv1": conv(sizes["conv1"], c1, 11, 3),
      "conv2": conv(sizes["conv2"], c2, 5, c1 // towers),
      "conv3": conv(sizes["conv3"], c3, 3, c2),
      "conv4": conv(sizes["conv4"], c4, 3, c3 // towers),
      "conv5": conv(sizes["conv5"], c5, 3, c4 // towers),
      "fc6": sizes["pool5"] ** 2 * c5 * f6,
      "fc7": f6 * f7,
      "fc8": f7 * config.num_classes,
  }
  if config.get("remove_conv4", False):  # conv5 reads conv3 (§7 ablation).
    del macs["conv4"]
    macs["conv5"] = conv(sizes["conv5"], c5, 3, c3 // towers)
  return macs


def _valid_taps(size: int, out: int, kernel: int, stride: int,
                pad_low: int) -> int:
  """Kernel taps, summed over output positions, that land inside the input.

  Along one spatial dimension; the rest fall on zero padding.
  """
  return sum(1 for o in range(out) for j in range(kernel)
             if 0 <= o * stride - pad_low + j < size)


def forward_macs_without_padding(config: ml_collections.ConfigDict
                                 ) -> dict[str, int]:
  """`forward_macs_per_image` without the taps that multiply zero padding.

  This is what XLA's cost analysis counts for a padded convolution (conv1's
  bottom/right pad of 3 at 224, the SAME padding of conv2-conv5), so it is
  the analytic figure to hold XLA's `cost_analysis()` against.
  """
  macs = forward_macs_per_image(config)
  sizes = model_lib.spatial_sizes(config.image_size, config.pool_window,
                                  config.pool_stride)
  inputs = dict(conv1=config.image_size, conv2=sizes["pool1"],
                conv3=sizes["pool2"], conv4=sizes["conv3"],
                conv5=sizes["conv4"])
  for name, kernel, stride in (("conv1", 11, 4), ("conv2", 5, 1),
                               ("conv3", 3, 1), ("conv4", 3, 1),
                               ("conv5", 3, 1)):
    if name not in macs:
      continue
    pad_low = 0 if name == "conv1" else (kernel - 1) // 2
    valid = _valid_taps(inputs[name], sizes[name], kernel, stride, pad_low)
    # Every tap is an equal share of the layer's multiply-adds.
    macs[name] = macs[name] * valid ** 2 // (sizes[name] * kernel) ** 2
  return macs


def analytic_flops(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """FLOPs per image: forward = 2 x multiply-adds; train step = 3x forward.

  The backward pass costs two matmuls per forward one (gradient of the input
  and of the weights), hence the usual 3x. The step computes slightly less:
  conv1's input gradient is never needed (the image takes no gradient), so
  `train_flops_per_image_exact` = 2 x (3 x forward MACs - conv1 MACs).
  MFU is computed with the 3x convention. `..._without_padding`: see
  `forward_macs_without_padding`.
  """
  layers = forward_macs_per_image(config)
  macs = sum(layers.values())
  unpadded = forward_macs_without_padding(config)
  return {
      "forward_macs_per_layer": layers,
      "forward_macs_per_image": macs,
      "forward_macs_per_image_without_padding": sum(unpadded.values()),
      "forward_flops_per_image_without_padding": 2 * sum(unpadded.values()),
      "forward_flops_per_image": 2 * macs,
      "train_flops_per_image": 3 * 2 * macs,
      "train_flops_per_image_exact": 2 * (3 * macs - layers["conv1"]),
  }


# ---------------------------------------------------------------------------
# Collectives: parsed from the compiled HLO, and the analytic minimum.
# ---------------------------------------------------------------------------

def analytic_collective_bytes(config: ml_collections.ConfigDict,
                              mesh_shape: tuple[int, int],
                              batch_size: int) -> dict[str, Any]:
  """Minimum bytes each device sends per train step for the chosen scheme.

  Values per image per device on a model axis of m devices, T towers (S2:
  pool2 size, C2 and F6 per-tower widths), bytes of the compute dtype
  except fc8's partial logits, which are summed in float32:

    forward   conv3 all-gather of pool2:  (m-1)/m x S2*S2*T*C2 (m = 2: the
                                          own tower's 13x13x128)
              fc6 reduce-scatter:         (m-1) x T/m*F6 (the own shard)
              fc7 all-gather:             (m-1)/m x T*F6
              fc8 all-reduce:             2 (m-1)/m x classes
    backward  the transposes of conv3, fc6 and fc7 (a reduce-scatter, an
              all-gather and a reduce-scatter of the same sizes). fc8's sum
              needs no backward collective: the logits, and so their
              gradient, are already whole on every device of a tower pair
              (the transpose of psum there is the identity), so the backward
              moves 2 x classes x (m-1)/m x 4 bytes less than the forward.
              parallel.py's table counts it twice (4,000 B/image more).
    data axis d > 1: the gradient all-reduce of the device's parameters
              (float32), 2 (d-1)/d x their bytes, and of the 3 scalars of
              the step's metrics (loss, top-1 and top-5 sums over the
              global batch).

  With the paper's sizes on 1 x 2, float32: 106,912 B/image forward (as in
  parallel.py) and 102,912 backward.
  """
  data, m = mesh_shape
  per_shard = batch_size // data
  result = {"model_forward": 0.0, "model_backward": 0.0, "data": 0.0}
  if m > 1:
    item = jnp.dtype(config.dtype).itemsize
    towers = config.num_towers
    c2 = config.conv_features[1]
    f6 = config.fc_features[0]
    sizes = model_lib.spatial_sizes(config.image_size, config.pool_window,
                                    config.pool_stride)
    frac = (m - 1) / m
    conv3 = frac * sizes["pool2"] ** 2 * towers * c2 * item
    fc6 = (m - 1) * (towers // m) * f6 * item
    fc7 = frac * towers * f6 * item
    fc8 = 2 * frac * config.num_classes * 4
    result["model_forward"] = per_shard * (conv3 + fc6 + fc7 + fc8)
    result["model_backward"] = per_shard * (conv3 + fc6 + fc7)
  if data > 1:
    shapes = model_lib.param_shapes(config)
    local = sum(math.prod(x.shape) // (
        1 if (name, leaf) in parallel.REPLICATED_PARAMS else m)
                for name, params in shapes.items()
                for leaf, x in params.items())
    result["data"] = 2 * (data - 1) / data * (local + 3) * 4
  result["total"] = sum(result.values())
  return result


# ---------------------------------------------------------------------------
# Peaks.
# ---------------------------------------------------------------------------


def datasheet_peak(device: jax.Device, dtype: str) -> float | None:
  """Datasheet dense peak FLOP/s of one device for `dtype`, or None."""
  kind = getattr(device, "device_kind", "")
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in kind.lower():
      return peaks[dtype] * 1e12
  return None


def measure_matmul_flops(devices: Sequence[jax.Device], size: int = 4096,
                         dtype: str = "float32", repeats: int = 5) -> float:
  """Best FLOP/s of `size`^3 matmuls, one per device, all devices at once.

  On CPU the fake devices share the cores, so this is the rate the same
  cores reach on a plain large matmul: the denominator of CPU MFU.
  """
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, P("d"))
  n = len(devices)
  a = jax.jit(lambda k: jax.random.normal(k, (n, size, size), dtype),
              out_shardings=sharding)(jax.random.key(0))
  matmul = jax.jit(jax.shard_map(lambda x, y: x @ y, mesh=mesh,
                                 in_specs=(P("d"), P("d")),
                                 out_specs=P("d")))
  jax.block_until_ready(matmul(a, a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    times.append(time.perf_counter() - start)
  return 2 * n * size ** 3 / min(times)


# ---------------------------------------------------------------------------
# The train-step benchmark.
# ---------------------------------------------------------------------------


def mesh_shapes(spec: str, num_devices: int, num_towers: int,
                batch_size: int) -> list[tuple[int, int]]:
  """Mesh shapes (data, model) to run: "auto", "none" or e.g. "1x1,1x2".

  auto: 1x1 (both towers on one device), 1 x m for every model axis m that
  divides the towers, then data x model for data = 2, 4, 8, ... and the
  whole machine, as far as the devices and the batch allow.
  """
  if spec in ("", "none"):
    return []
  if spec != "auto":
    shapes = []
    for item in spec.split(","):
      data, _, model = item.strip().partition("x")
      shapes.append((int(data), int(model)))
    return shapes
  models = [m for m in range(1, num_towers + 1) if num_towers % m == 0]
  shapes = set()
  for m in models:
    datas = {1, num_devices // m} | {2 ** i for i in range(1, 12)}
    for d in datas:
      if d >= 1 and d * m <= num_devices and batch_size % d == 0:
        shapes.add((d, m))
  return sorted(shapes, key=lambda s: (s[0] * s[1], -s[1], s[0]))


def random_batch(config: ml_collections.ConfigDict, batch_size: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A fixed random batch: normal images (as after mean subtraction)."""
  rng = np.random.default_rng(seed)
  size = config.model.image_size
  return {
      "image": rng.normal(0, 50, (batch_size, size, size, 3)).astype(
          np.float32),
      "label": rng.integers(0, config.model.num_classes, batch_size).astype(
          np.int32),
  }


def _cost_flops(compiled: Any) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per module.
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _memory(compiled: Any, devices: Iterable[jax.Device]) -> dict[str, Any]:
  """Peak memory the backend reports (None on CPU) and XLA's own analysis."""
  peaks = []
  for device in devices:
    stats = device.memory_stats()  # None on the CPU backend.
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  analysis = compiled.memory_analysis()
  compiled_bytes = None
  if analysis is not None:
    compiled_bytes = (analysis.argument_size_in_bytes +
                      analysis.output_size_in_bytes -
                      analysis.alias_size_in_bytes +
                      analysis.temp_size_in_bytes)
  return {"peak_device_bytes": max(peaks) if peaks else None,
          "compiled_bytes_per_device": compiled_bytes}


class TrainStepCase:
  """The compiled train step of `config` (model + optim) on a data x model
  mesh, with its state and a fixed batch, timed step by step.

  `result()` gives compile time, per-step wall and CPU times, images/s,
  XLA's FLOPs of the step and of the forward pass, the collectives of the
  compiled step and memory. `run` times the cases one after another or,
  with `interleave`, one step of each in turn.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               mesh_shape: tuple[int, int], batch_size: int):
    self.config, self.mesh_shape, self.batch_size = (config, mesh_shape,
                                                     batch_size)
    self.mesh = parallel.make_mesh(*mesh_shape,
                                   num_towers=config.model.num_towers)
    parallel.check_batch_size(batch_size, self.mesh)
    self.state, shardings = steps_lib.create_train_state(
        config, jax.random.key(0), self.mesh)
    train_step = steps_lib.make_train_step(config, self.mesh, shardings)
    self.batch = parallel.shard_batch(random_batch(config, batch_size),
                                      self.mesh)
    start = time.perf_counter()
    lowered = train_step.lower(self.state, self.batch)
    self.lower_s = time.perf_counter() - start
    start = time.perf_counter()
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    # XLA's count of the forward pass alone (inference, no dropout).
    apply = model_lib.make_apply(config.model, self.mesh)
    self.forward = jax.jit(apply).lower(self.state.params,
                                        self.batch["image"]).compile()
    self.metrics = None
    self.wall: list[float] = []
    self.cpu: list[float] = []

  def step(self, timed: bool = True) -> None:
    """One step, blocked on; its wall and CPU seconds recorded if `timed`."""
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))
    if timed:
      self.wall.append(time.perf_counter() - wall_start)
      self.cpu.append(time.process_time() - cpu_start)

  def result(self, profile_dir: str | None = None) -> dict[str, Any]:
    """The figures of the timed steps; with `profile_dir`, where the time
    of two more (traced) steps goes."""
    config, mesh_shape, batch_size = (self.config, self.mesh_shape,
                                      self.batch_size)
    devices = list(self.mesh.devices.flat)
    num_devices = len(devices)
    hlo_text = self.compiled.as_text()
    loss = float(self.metrics["loss"])
    profile = None
    if profile_dir is not None:
      profile = profile_steps(
          self.compiled, self.state, self.batch, hlo_text, profile_dir,
          num_devices=num_devices,
          kernels=kernel_layers(config.model, parallel.towers_per_device(
              self.mesh, config.model.num_towers)))
    step_s = statistics.median(self.wall)
    collectives = hlo.collectives(hlo_text, mesh_shape)
    xla_step = _cost_flops(self.compiled)
    xla_forward = _cost_flops(self.forward)
    # The compiled module is the per-device program: x devices for the mesh.
    per_image = lambda f: None if f is None else f * num_devices / batch_size
    return {
        "mesh": f"{mesh_shape[0]}x{mesh_shape[1]}",
        "devices": num_devices,
        "dtype": config.model.dtype,
        "batch_size": batch_size,
        "lower_s": self.lower_s,
        "compile_s": self.compile_s,
        "lower_plus_compile_s": self.lower_s + self.compile_s,
        "step_s_median": step_s,
        "step_s": self.wall,
        "step_cpu_s": self.cpu,
        "images_per_s": batch_size / step_s,
        "images_per_cpu_s": batch_size / statistics.median(self.cpu),
        "final_loss": loss,
        "xla_train_flops_per_image": per_image(xla_step),
        "xla_forward_flops_per_image": per_image(xla_forward),
        "collectives": collectives,
        "collective_bytes_sent_per_device": hlo.summarize(collectives),
        "analytic_collective_bytes_per_device": analytic_collective_bytes(
            config.model, mesh_shape, batch_size),
        "memory": _memory(self.compiled, devices),
        "profile": profile,
    }


# ---------------------------------------------------------------------------
# Where the time goes: a jax.profiler trace of two steps, per HLO op.
# ---------------------------------------------------------------------------

# Einsums of the fc layers (model.py) by their subscripts.
_FC_EINSUMS = {"bti,tio->bo": "fc6", "bi,tio->bto": "fc7",
               "bti,tik->bk": "fc8"}


def kernel_layers(config: ml_collections.ConfigDict,
                  towers_local: int) -> dict[tuple[int, ...], str]:
  """Conv layer by the sorted dims of its per-device kernel gradient.

  XLA's weight-gradient convolutions carry no op_name; their result is the
  kernel in some dim order: (k, k, inputs, local towers x outputs) for the
  layers whose towers share one convolution (conv1, conv3), (k, k, inputs
  per tower, outputs) for the one-convolution-per-tower layers (model.py).
  """
  towers = config.num_towers
  c1, c2, c3, c4, c5 = config.conv_features
  inputs = dict(conv1=3, conv2=c1, conv3=towers * c2, conv4=c3, conv5=c4)
  outputs = dict(conv1=towers_local * c1, conv2=c2,
                 conv3=towers_local * c3, conv4=c4, conv5=c5)
  sizes = dict(conv1=11, conv2=5, conv3=3, conv4=3, conv5=3)
  return {tuple(sorted((sizes[n], sizes[n], inputs[n], outputs[n]))): n
          for n in sizes}


def _op_category(line: str, body: str, num_devices: int,
                 kernels: dict[tuple[int, ...], str] | None = None) -> str:
  """A readable group for one top-level HLO op (fusion bodies included)."""
  op_name = re.search(r'op_name="([^"]*)"', line)
  op_name = op_name.group(1) if op_name else ""
  phase = ("bwd" if "transpose(" in op_name else
           "fwd" if "jvp(" in op_name else "")
  opcode = re.search(r"= (?:\(.*?\)|\S+) ([\w\-]+)\(", line)
  opcode = opcode.group(1) if opcode else ""
  if any(opcode.startswith(op) for op in hlo.COLLECTIVE_OPS):
    group = hlo.replica_groups(line, num_devices)[0]
    return "collectives" + (" (1-device groups: copies)"
                            if len(group) == 1 else "")
  layer = re.search(r"AlexNet/(conv\d|fc\d)/", op_name)
  einsum = re.search(r"AlexNet/([a-z,]+->[a-z]+)/", op_name)
  layer = layer.group(1) if layer else (
      _FC_EINSUMS.get(einsum.group(1)) if einsum else None)
  text = line + body
  if "convolution(" in text:
    if layer:
      return f"conv {layer} {phase}"
    dims = re.match(r"\s*\S+ = [a-z\d]+\[([\d,]+)\]", line)
    dims = tuple(sorted(int(d) for d in dims.group(1).split(","))
                 ) if dims else ()
    return f"conv {(kernels or {}).get(dims, '?')} weight gradient"
  if " dot(" in text:
    return f"matmul {layer} {phase}" if layer else "matmul (other)"
  if "_lrn" in op_name:
    return f"LRN {phase}"
  if ("_pool" in op_name or "select-and-scatter" in text or
      "reduce-window(" in text or opcode == "iota" or "iota(" in body):
    return "max-pool (incl. argmax indices for its gradient)"
  if "_dropout" in op_name or "threefry" in text or "rng-bit" in text:
    return "dropout masks"
  if opcode in ("copy", "transpose") or re.search(
      r"(copy|transpose)[\w.]*fusion", line.split("=")[0]):
    return "layout copies / transposes"
  return "other elementwise (ReLU, bias, optimizer, loss)"


def profile_steps(compiled: Any, state: Any, batch: Any, hlo_text: str,
                  log_dir: str, num_devices: int, num_steps: int = 2,
                  kernels: dict[tuple[int, ...], str] | None = None
                  ) -> dict[str, Any]:
  """Traces `num_steps` steps with jax.profiler; see `summarize_trace`."""
  jax.profiler.start_trace(log_dir)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  wall = (time.perf_counter() - start) / num_steps
  jax.profiler.stop_trace()
  trace = sorted(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"),
                           recursive=True), key=os.path.getmtime)[-1]
  summary = summarize_trace(trace, hlo_text, num_devices, num_steps, kernels)
  summary.update(wall_s_per_step=wall, trace=trace)
  return summary


def summarize_trace(trace: str, hlo_text: str, num_devices: int,
                    num_steps: int,
                    kernels: dict[tuple[int, ...], str] | None = None
                    ) -> dict[str, Any]:
  """Time per op group of a trace of `num_steps` steps of `hlo_text`.

  Sums the durations of the trace events named like the program's
  top-level ops, over all threads: on CPU this is the time threads spent
  in each group (including time descheduled by other jobs), so
  `busy_s_per_step` over the wall time is the average number of busy
  threads.
  """
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  bodies = {}
  for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text,
                       re.M | re.S):
    bodies[m.group(1)] = m.group(2)
  ops = {}
  for line in entry.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m:
      called = re.search(r"calls=%?([\w.\-]+)", line)
      body = bodies.get(called.group(1), "") if called else ""
      ops[m.group(1)] = _op_category(line, body, num_devices, kernels)
  busy = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(trace).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in ops:
          busy[ops[event.name]] += event.duration_ns / 1e9 / num_steps
  return {"busy_s_per_step": sum(busy.values()),
          "busy_s_by_group": dict(busy.most_common())}


# ---------------------------------------------------------------------------
# The whole report.
# ---------------------------------------------------------------------------


def cpu_model() -> str:
  """The CPU model from /proc/cpuinfo (input_benchmark has the same, but
  importing it imports TensorFlow)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      fields = dict(line.split(":", 1) for line in f if ":" in line)
    name, family, number = (fields.get(key, "").strip() for key in (
        "model name\t", "cpu family\t", "model\t\t"))
    return f"{name} (family {family}, model {number})"
  except OSError:
    return platform.processor() or "unknown"


def _with_dtype(config: ml_collections.ConfigDict, dtype: str
                ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  return config


def _out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def best_batches(results: Sequence[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
  """The fastest batch size of each (mesh, dtype) that ran several."""
  groups = collections.defaultdict(list)
  for r in results:
    if "images_per_s" in r:
      groups[r["mesh"], r["dtype"]].append(r)
  best = []
  for (mesh, dtype), group in groups.items():
    if len(group) > 1:
      fastest = max(group, key=lambda r: r["images_per_s"])
      best.append(dict(mesh=mesh, dtype=dtype,
                       batch_size=fastest["batch_size"],
                       images_per_s=fastest["images_per_s"],
                       batch_sizes=[r["batch_size"] for r in group]))
  return best


def run(config: ml_collections.ConfigDict, *, batch_sizes: Sequence[int],
        meshes: str = "auto", dtypes: Sequence[str] = ("float32",),
        steps: int = 5, warmup: int = 2, matmul_size: int = 4096,
        profile_dir: str | None = None, interleave: bool = False,
        log=print) -> dict[str, Any]:
  """Benchmarks every (mesh, dtype, batch); returns the JSON-able report.

  `interleave`: compile and warm up every case first, then time one step of
  each in turn, `steps` rounds, so that all cases see the same load (the
  fair comparison on a shared machine; needs every case in memory at once).
  """
  devices = jax.devices()
  backend = jax.default_backend()
  flops = analytic_flops(config.model)
  shapes = mesh_shapes(meshes, len(devices), config.model.num_towers,
                       math.gcd(*batch_sizes))
  report = {
      "backend": backend,
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "cpu": cpu_model(),
      "cpus_visible": os.cpu_count(),
      "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
      "num_params": model_lib.count_params(
          model_lib.param_shapes(config.model)),
      "analytic_flops": flops,
      "paper_forward_macs": PAPER_FORWARD_MACS,
      "timing": ("median of per-step wall times; every step is blocked on "
                 "(block_until_ready of the new state and metrics)"),
      "peak_memory_note": (
          "device.memory_stats() is None on the CPU backend"
          if backend == "cpu" else "device.memory_stats()['peak_bytes_in_"
          "use'], max over the mesh's devices"),
      "results": [],
  }
  peaks: dict[tuple[int, str], float] = {}
  cases = [(shape, dtype, batch) for shape in shapes for dtype in dtypes
           for batch in batch_sizes]
  names = {case: f"{case[0][0]}x{case[0][1]} {case[1]}: batch {case[2]}"
           for case in cases}
  results, loads = {}, {}

  def prepare(case):
    """The case compiled and warmed up, or None (out of memory: recorded)."""
    shape, dtype, batch_size = case
    try:
      prepared = TrainStepCase(_with_dtype(config, dtype), shape, batch_size)
      for _ in range(warmup):
        prepared.step(timed=False)
      return prepared
    except jax.errors.JaxRuntimeError as e:
      if not _out_of_memory(e):
        raise
      log(f"  batch {batch_size} does not fit in device memory")
      results[case] = dict(mesh=f"{shape[0]}x{shape[1]}", dtype=dtype,
                           batch_size=batch_size,
                           error="out of device memory")
      return None

  def case_dir(case):
    return None if profile_dir is None else os.path.join(
        profile_dir, names[case].replace(": batch ", "_").replace(" ", "_"))

  if interleave:
    prepared = {}
    for case in cases:
      log(f"mesh {names[case]}: compiling ...")
      prepared[case] = prepare(case)
    prepared = {case: p for case, p in prepared.items() if p is not None}
    load = os.getloadavg()  # One reading: the cases are timed together.
    loads.update(dict.fromkeys(prepared, load))
    log(f"timing {steps} rounds of one step per case, load {load[0]:.2f} "
        "...")
    for _ in range(steps):
      for p in prepared.values():
        p.step()
    first = next(iter(prepared.values()), None)
    for case, p in prepared.items():
      results[case] = p.result(case_dir(case))
      # Paired by round, so load that changes between rounds cancels.
      results[case]["speed_vs_first_case"] = statistics.median(
          a / b for a, b in zip(first.wall, p.wall))
  else:
    for case in cases:
      loads[case] = os.getloadavg()
      log(f"mesh {names[case]}, load {loads[case][0]:.2f} ...")
      p = prepare(case)
      if p is not None:
        for _ in range(steps):
          p.step()
        results[case] = p.result(case_dir(case))
        del p  # Frees its device memory before the next case.

  for case in cases:
    result, dtype = results[case], case[1]
    report["results"].append(result)
    if "error" in result:
      continue
    n = result["devices"]
    if backend == "cpu":
      if (n, "float32") not in peaks:
        peaks[n, "float32"] = measure_matmul_flops(
            jax.devices()[:n], matmul_size, "float32")
      peak = peaks[n, "float32"]
      peak_source = (f"measured float32 {matmul_size}^3 matmul on the "
                     f"same {n} device(s)")
    else:
      one = datasheet_peak(devices[0], dtype)
      peak = None if one is None else one * n
      peak_source = "vendor datasheet, dense" if one else "unknown device"
    achieved = flops["train_flops_per_image"] * result["images_per_s"]
    result.update(
        load_average_before=loads[case],
        load_average_after=os.getloadavg(),
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak,
        peak_source=peak_source,
        mfu=None if not peak else achieved / peak)
    log(format_row(result))
  report["best_batch"] = best_batches(report["results"])
  return report


_COLUMNS = (("mesh", 5), ("dev", 3), ("dtype", 8), ("batch", 5),
            ("compile_s", 9), ("step_s", 7), ("img/s", 7),
            ("img/cpu_s", 9), ("TFLOP/s", 7), ("MFU", 6),
            ("coll_MB_hlo", 11), ("coll_MB_min", 11), ("load", 5))


def _row(values: Sequence[str]) -> str:
  return " ".join(f"{v:>{w}}" for v, (_, w) in zip(values, _COLUMNS))


def format_row(r: dict[str, Any]) -> str:
  """One line of the results table (collectives: MB per device per step)."""
  if "error" in r:
    return _row([r["mesh"], "", r["dtype"].replace("bfloat16", "bf16"),
                 str(r["batch_size"]), r["error"]])
  mfu = r.get("mfu")
  return _row([
      r["mesh"], str(r["devices"]), r["dtype"].replace("bfloat16", "bf16"),
      str(r["batch_size"]), f"{r['lower_plus_compile_s']:.1f}",
      f"{r['step_s_median']:.2f}", f"{r['images_per_s']:.1f}",
      f"{r['images_per_cpu_s']:.1f}",
      f"{r.get('achieved_flops_per_s', 0.0) / 1e12:.3f}",
      "-" if mfu is None else f"{100 * mfu:.1f}%",
      f"{r['collective_bytes_sent_per_device']['total'] / 1e6:.3f}",
      f"{r['analytic_collective_bytes_per_device']['total'] / 1e6:.3f}",
      f"{r.get('load_average_before', (float('nan'),))[0]:.1f}"])


def format_report(report: dict[str, Any]) -> str:
  """The printed report: FLOPs, the results table, per-case details."""
  flops = report["analytic_flops"]
  lines = [
      f"{report['backend']} x{report['num_devices']} "
      f"({report['device_kind']}); CPU {report['cpu']}; jax "
      f"{report['jax']}; {report['num_params']:,} parameters",
      "Analytic forward multiply-adds per image: " + ", ".join(
          f"{k} {v / 1e6:.1f}M"
          for k, v in flops["forward_macs_per_layer"].items()) +
      f"; total {flops['forward_macs_per_image']:,} "
      f"({flops['forward_macs_per_image'] / PAPER_FORWARD_MACS:.4f} x the "
      "paper's 724M)",
      f"FLOPs per image: forward {flops['forward_flops_per_image'] / 1e9:.3f}"
      f" G ({flops['forward_flops_per_image_without_padding'] / 1e9:.3f} G "
      f"without taps on zero padding); train step (3x) "
      f"{flops['train_flops_per_image'] / 1e9:.3f} G (exact, no conv1 input "
      f"gradient: {flops['train_flops_per_image_exact'] / 1e9:.3f} G)",
      "", _row([name for name, _ in _COLUMNS])]
  lines += [format_row(r) for r in report["results"]]
  if report["results"]:
    lines += [
        "step_s: median wall time per step (each step blocked on); "
        "img/cpu_s: images per CPU-second of the process; MFU: analytic "
        "train FLOPs (3x forward) x img/s / peak; coll_MB: MB each device "
        "sends per step, from the compiled HLO and the analytic minimum; "
        "load: 1-min load average before the case.", ""]
  for best in report.get("best_batch", ()):
    lines.append(
        f"best batch, {best['mesh']} {best['dtype']}: {best['batch_size']} "
        f"({best['images_per_s']:.1f} images/s; of {best['batch_sizes']})")
  if report.get("best_batch"):
    lines.append("")
  if any("speed_vs_first_case" in r for r in report["results"]):
    first = report["results"][0]
    lines += [f"interleaved: speed relative to {first['mesh']} "
              f"{first['dtype']} batch {first['batch_size']} (median over "
              "rounds of its step time / this case's): " + ", ".join(
                  f"{r['mesh']} {r['dtype']} batch {r['batch_size']} "
                  f"{r['speed_vs_first_case']:.3f}x"
                  for r in report["results"] if "speed_vs_first_case" in r),
              ""]
  for r in report["results"]:
    if "error" in r:
      continue
    fmt = lambda x: "n/a" if x is None else f"{x / 1e9:.3f} G"
    mem = r["memory"]
    peak = mem["peak_device_bytes"]
    peak = "None (not reported)" if peak is None else f"{peak / 2**30:.2f} GiB"
    compiled = mem["compiled_bytes_per_device"]
    lines.append(
        f"{r['mesh']} {r['dtype']}: XLA cost_analysis FLOPs/image forward "
        f"{fmt(r['xla_forward_flops_per_image'])}, train step "
        f"{fmt(r['xla_train_flops_per_image'])}; peak "
        f"{(r['peak_flops_per_s'] or 0) / 1e12:.3f} TFLOP/s "
        f"({r['peak_source']}); peak device memory {peak}; XLA compiled "
        f"memory "
        f"{'n/a' if compiled is None else f'{compiled / 2**30:.2f} GiB'}"
        f"/device; step times {[round(x, 2) for x in r['step_s']]} s")
    for c in r["collectives"]:
      if c["sent_bytes"]:
        lines.append(f"    {c['axis']:5s} {c['phase']:8s} {c['op']:15s} "
                     f"{' '.join(c['types'])[:50]:50s} group "
                     f"{c['group_size']} sends {c['sent_bytes'] / 1e6:.3f} MB")
    if r.get("profile"):
      p = r["profile"]
      lines.append(f"    profile: {p['wall_s_per_step']:.2f} s/step wall, "
                   f"{p['busy_s_per_step']:.2f} s in ops (summed over "
                   "threads):")
      for group, seconds in p["busy_s_by_group"].items():
        share = 100 * seconds / p["busy_s_per_step"]
        lines.append(f"      {seconds:7.3f} s {share:5.1f}%  {group}")
  if report.get("input_pipeline"):
    i = report["input_pipeline"]
    lines.append(
        f"Input pipeline, training transforms, {i['threads']} tf.data "
        f"thread, batch {i['batch_size']}: {i['images_per_s']:.1f} images/s "
        f"median, {i['images_per_cpu_s']:.1f} per CPU-second, best pass "
        f"{i['best_images_per_s']:.1f} (alexnet_jax/input_benchmark.py)")
  return "\n".join(lines)


def benchmark_input(num_images: int = 256, passes: int = 3,
                    images_per_pass: int = 512) -> dict[str, Any]:
  """The training input pipeline's images/s on one core.

  Delegates to alexnet_jax/input_benchmark.py (imported here: it needs
  TensorFlow, which the model benchmark does not).
  """
  from alexnet_jax import input_benchmark  # pylint: disable=g-import-not-at-top

  # One thread for TensorFlow's op pools too, as input_benchmark's main does.
  input_benchmark._limit_tensorflow_threads(1)  # pylint: disable=protected-access
  jpegs = input_benchmark.synthetic_jpegs(num_images)
  return input_benchmark.benchmark(jpegs, "train", threads=1, passes=passes,
                                   images_per_pass=images_per_pass)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

def define_flags() -> None:
  """This tool's flags, defined only when it runs (other command lines of
  the package define flags of the same names)."""
  config_flags.DEFINE_config_file(
      "config", None, "Optional config file with `model` and `optim` sections "
      "(e.g. configs/ilsvrc2010.py:caffe_lrn); default: the paper's model and "
      "optimizer (model.default_config(), optim.default_config()).",
      lock_config=False)
  flags.DEFINE_list(
      "batch_size", ["128"], "Global batch size, or a list of them to sweep "
      "(e.g. 128,512,2048): the report adds the best one per mesh and dtype.")
  flags.DEFINE_string(
      "meshes", "auto", "'auto' (1x1, 1x2, then larger data x model shapes "
      "as the devices allow), a list like '1x1,1x2,2x2' (data x model), or "
      "'none' (e.g. with --input only).")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"],
                    "Compute dtypes (model.dtype) to run.")
  flags.DEFINE_integer("steps", 5, "Timed steps (median reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
  flags.DEFINE_integer(
      "cpu_devices", 2, "Fake CPU devices to make before JAX starts (the CPU "
      "backend only; GPUs and TPUs are unaffected). 0: JAX's default (1).")
  flags.DEFINE_integer(
      "matmul_size", 4096, "Side of the float32 matmul that measures the CPU "
      "peak.")
  flags.DEFINE_bool(
      "input", False, "Also time the input pipeline on one core (needs "
      "TensorFlow).")
  flags.DEFINE_bool(
      "profile", False, "Trace 2 steps per case and print the time per op "
      "group (conv/matmul per layer, LRN, pooling, collectives, copies).")
  flags.DEFINE_string(
      "profile_dir", None, "Where --profile writes traces (default: a "
      "temporary directory).")
  flags.DEFINE_bool(
      "interleave", False, "Compile every case first, then time one step of "
      "each in turn (all cases share the machine's load: the fair comparison "
      "on a shared host; every case must fit in memory at once).")
  flags.DEFINE_string("json", None, "Write the report here as JSON.")


def default_config() -> ml_collections.ConfigDict:
  """The paper's model and optimizer (as configs/ilsvrc2010.py has them)."""
  return ml_collections.ConfigDict(dict(model=model_lib.default_config(),
                                        optim=optim.default_config()))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.cpu_devices:  # Before JAX initializes a backend.
    jax.config.update("jax_num_cpu_devices", f.cpu_devices)
  config = cli.config_value(f["config"]) or default_config()
  profile_dir = None
  if f.profile:
    profile_dir = f.profile_dir or tempfile.mkdtemp(
        prefix="alexnet_benchmark_")
  try:
    batch_sizes = [int(b) for b in f.batch_size]
  except ValueError:
    batch_sizes = []
  if not batch_sizes or min(batch_sizes) < 1:
    raise cli.UserError(f"--batch_size={','.join(f.batch_size)}: give "
                        "positive integers, e.g. --batch_size=128,512.")
  report = run(config, batch_sizes=batch_sizes, meshes=f.meshes,
               dtypes=f.dtypes, steps=f.steps,
               warmup=f.warmup, matmul_size=f.matmul_size,
               profile_dir=profile_dir, interleave=f.interleave,
               log=functools.partial(print, flush=True))
  if f.input:
    report["input_pipeline"] = benchmark_input()
  report["load_average_end"] = os.getloadavg()
  report["command"] = " ".join(["python -m alexnet_jax.benchmark"] +
                               sys.argv[1:])
  print()
  print(format_report(report))
  if f.json:
    with open(f.json, "w", encoding="utf-8") as out:
      json.dump(report, out, indent=2, default=float)
    print(f"wrote {f.json}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
