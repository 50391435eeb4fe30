"""The machine a benchmark runs on: its CPU and its peak FLOP/s.

The peak is the denominator of model FLOP utilization (MFU): a vendor
datasheet's dense rate for GPUs and TPUs (`PEAK_TFLOPS`), and on CPU the
rate the same cores reach on a plain large matmul (`measure_matmul_flops`).
"""

from __future__ import annotations

from collections.abc import Sequence
import platform
import time

import jax
from jax.sharding import PartitionSpec as P
import numpy as np

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


def datasheet_peak(device: jax.Device, dtype: str) -> float | None:
  """Datasheet dense peak FLOP/s of one device for `dtype`, or None."""
  kind = getattr(device, "device_kind", "")
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in kind.lower():
      return peaks[dtype] * 1e12
  return None


def measure_matmul_flops(
    devices: Sequence[jax.Device],
    size: int = 4096,
    dtype: str = "float32",
    repeats: int = 5,
) -> float:
  """Best FLOP/s of `size`^3 matmuls, one per device, all devices at once.

  On CPU the fake devices share the cores, so this is the rate the same
  cores reach on a plain large matmul: the denominator of CPU MFU.
  """
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, P("d"))
  n = len(devices)
  a = jax.jit(
      lambda k: jax.random.normal(k, (n, size, size), dtype),
      out_shardings=sharding,
  )(jax.random.key(0))
  matmul = jax.jit(
      jax.shard_map(
          lambda x, y: x @ y,
          mesh=mesh,
          in_specs=(P("d"), P("d")),
          out_specs=P("d"),
      )
  )
  jax.block_until_ready(matmul(a, a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    times.append(time.perf_counter() - start)
  return 2 * n * size**3 / min(times)


def cpu_model() -> str:
  """The CPU model, family and model number from /proc/cpuinfo (or the
  platform's guess)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      fields = dict(line.split(":", 1) for line in f if ":" in line)
    name, family, number = (
        fields.get(key, "").strip()
        for key in ("model name\t", "cpu family\t", "model\t\t")
    )
    return f"{name} (family {family}, model {number})"
  except OSError:
    return platform.processor() or "unknown"
