r"""Train-step throughput, FLOPs, utilization and collective bytes of AlexNet.

A tool, not a test. For each mesh shape and dtype it times the train step of
the paper's full model (`model.default_config()`, 60,965,224 parameters, the
§5 optimizer) on a fixed random batch that is already on the devices:

  python -m benchmarks.train_step [--batch_size=128[,256,...]]
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
  * FLOPs per image: analytic (`costs.analytic_flops`: 2 x multiply-adds of
    every conv and fc layer, forward; a training step counted as 3x forward)
    beside XLA's `compiled.cost_analysis()` of the train step and of the
    forward pass; achieved FLOP/s and model FLOP utilization (MFU) against
    the device's peak (`machine.PEAK_TFLOPS`, vendor datasheet dense numbers)
    or, on CPU, against a measured float32 matmul rate on the same devices.
  * collective bytes per device per step, parsed from the compiled HLO
    (`hlo.collectives`) beside the analytic minimum of the two-tower
    scheme (`costs.analytic_collective_bytes`).
  * peak device memory (`device.memory_stats()`; the CPU backend reports
    none, so it is None there) and XLA's compiled memory analysis.

`--interleave` compiles every case first and then times one step of each in
turn, so that on a machine shared with other jobs all cases see the same
load. Several batch sizes (`--batch_size=128,512,2048`) add the best batch per
(mesh, dtype) to the report; a batch that does not fit in device memory is
reported as such and the sweep goes on.

`--input` adds the input pipeline's training images/s on one core
(input_pipeline.py here; needs TensorFlow, imported only then).
`--profile` traces two steps per case with `jax.profiler` and prints where
the time goes (conv / matmul per layer, LRN, pooling, collectives, copies;
op_profile.py).

On a CPU-only host `--cpu_devices=N` makes N fake CPU devices before JAX
starts (only the CPU backend is affected); the fake devices share the same
cores and XLA's one intra-op thread pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import functools
import math
import os
import statistics
import tempfile
import time
from typing import Any

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from benchmarks import costs
from benchmarks import hlo
from benchmarks import machine
from benchmarks import op_profile
from benchmarks import report as report_lib


def mesh_shapes(
    spec: str, num_devices: int, num_towers: int, batch_size: int
) -> list[tuple[int, int]]:
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
    datas = {1, num_devices // m} | {2**i for i in range(1, 12)}
    for d in datas:
      if d >= 1 and d * m <= num_devices and batch_size % d == 0:
        shapes.add((d, m))
  return sorted(shapes, key=lambda s: (s[0] * s[1], -s[1], s[0]))


def random_batch(
    config: ml_collections.ConfigDict, batch_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A fixed random batch: normal images (as after mean subtraction)."""
  rng = np.random.default_rng(seed)
  size = config.model.image_size
  return {
      "image": rng.normal(0, 50, (batch_size, size, size, 3)).astype(
          np.float32
      ),
      "label": rng.integers(0, config.model.num_classes, batch_size).astype(
          np.int32
      ),
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
    compiled_bytes = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )
  return {
      "peak_device_bytes": max(peaks) if peaks else None,
      "compiled_bytes_per_device": compiled_bytes,
  }


class TrainStepCase:
  """The compiled train step of `config` (model + optim) on a data x model
  mesh, with its state and a fixed batch, timed step by step.

  `result()` gives compile time, per-step wall and CPU times, images/s,
  XLA's FLOPs of the step and of the forward pass, the collectives of the
  compiled step and memory. `run` times the cases one after another or,
  with `interleave`, one step of each in turn.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      mesh_shape: tuple[int, int],
      batch_size: int,
  ):
    self.config, self.mesh_shape, self.batch_size = (
        config,
        mesh_shape,
        batch_size,
    )
    self.mesh = parallel.make_mesh(
        *mesh_shape, num_towers=config.model.num_towers
    )
    parallel.check_batch_size(batch_size, self.mesh)
    self.state, shardings = steps_lib.create_train_state(
        config, jax.random.key(0), self.mesh
    )
    train_step = steps_lib.make_train_step(config, self.mesh, shardings)
    self.batch = parallel.shard_batch(
        random_batch(config, batch_size), self.mesh
    )
    start = time.perf_counter()
    lowered = train_step.lower(self.state, self.batch)
    self.lower_s = time.perf_counter() - start
    start = time.perf_counter()
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    # XLA's count of the forward pass alone (inference, no dropout).
    apply = model_lib.make_apply(config.model, self.mesh)
    self.forward = (
        jax.jit(apply).lower(self.state.params, self.batch["image"]).compile()
    )
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
    config, mesh_shape, batch_size = (
        self.config,
        self.mesh_shape,
        self.batch_size,
    )
    devices = list(self.mesh.devices.flat)
    num_devices = len(devices)
    hlo_text = self.compiled.as_text()
    loss = float(self.metrics["loss"])
    profile = None
    if profile_dir is not None:
      profile = op_profile.profile_steps(
          self.compiled,
          self.state,
          self.batch,
          hlo_text,
          profile_dir,
          num_devices=num_devices,
          layers=tuple(self.state.params),
          lrn=config.model.lrn.get("enabled", True),
          kernels=op_profile.kernel_layers(
              config.model,
              parallel.towers_per_device(self.mesh, config.model.num_towers),
          ),
      )
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
        "analytic_collective_bytes_per_device": (
            costs.analytic_collective_bytes(
                config.model, mesh_shape, batch_size
            )
        ),
        "memory": _memory(self.compiled, devices),
        "profile": profile,
    }


# ---------------------------------------------------------------------------
# Every case: the report (report.py prints it).
# ---------------------------------------------------------------------------


def _with_dtype(
    config: ml_collections.ConfigDict, dtype: str
) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  return config


def _out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def run(
    config: ml_collections.ConfigDict,
    *,
    batch_sizes: Sequence[int],
    meshes: str = "auto",
    dtypes: Sequence[str] = ("float32",),
    steps: int = 5,
    warmup: int = 2,
    matmul_size: int = 4096,
    profile_dir: str | None = None,
    interleave: bool = False,
    log=print,
) -> dict[str, Any]:
  """Benchmarks every (mesh, dtype, batch); returns the JSON-able report.

  `interleave`: compile and warm up every case first, then time one step of
  each in turn, `steps` rounds, so that all cases see the same load (the
  fair comparison on a shared machine; needs every case in memory at once).
  """
  devices = jax.devices()
  backend = jax.default_backend()
  flops = costs.analytic_flops(config.model)
  shapes = mesh_shapes(
      meshes, len(devices), config.model.num_towers, math.gcd(*batch_sizes)
  )
  report = {
      "backend": backend,
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "cpu": machine.cpu_model(),
      "cpus_visible": os.cpu_count(),
      "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
      "num_params": model_lib.count_params(
          model_lib.param_shapes(config.model)
      ),
      "analytic_flops": flops,
      "paper_forward_macs": costs.PAPER_FORWARD_MACS,
      "timing": (
          "median of per-step wall times; every step is blocked on "
          "(block_until_ready of the new state and metrics)"
      ),
      "peak_memory_note": (
          "device.memory_stats() is None on the CPU backend"
          if backend == "cpu"
          else "device.memory_stats()['peak_bytes_in_"
          "use'], max over the mesh's devices"
      ),
      "results": [],
  }
  peaks: dict[tuple[int, str], float] = {}
  cases = [
      (shape, dtype, batch)
      for shape in shapes
      for dtype in dtypes
      for batch in batch_sizes
  ]
  names = {
      case: f"{case[0][0]}x{case[0][1]} {case[1]}: batch {case[2]}"
      for case in cases
  }
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
      results[case] = dict(
          mesh=f"{shape[0]}x{shape[1]}",
          dtype=dtype,
          batch_size=batch_size,
          error="out of device memory",
      )
      return None

  def case_dir(case):
    return (
        None
        if profile_dir is None
        else os.path.join(
            profile_dir, names[case].replace(": batch ", "_").replace(" ", "_")
        )
    )

  if interleave:
    prepared = {}
    for case in cases:
      log(f"mesh {names[case]}: compiling ...")
      prepared[case] = prepare(case)
    prepared = {case: p for case, p in prepared.items() if p is not None}
    load = os.getloadavg()  # One reading: the cases are timed together.
    loads.update(dict.fromkeys(prepared, load))
    log(f"timing {steps} rounds of one step per case, load {load[0]:.2f} ...")
    for _ in range(steps):
      for p in prepared.values():
        p.step()
    first = next(iter(prepared.values()), None)
    for case, p in prepared.items():
      results[case] = p.result(case_dir(case))
      # Paired by round, so load that changes between rounds cancels.
      results[case]["speed_vs_first_case"] = statistics.median(
          a / b for a, b in zip(first.wall, p.wall)
      )
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
        peaks[n, "float32"] = machine.measure_matmul_flops(
            jax.devices()[:n], matmul_size, "float32"
        )
      peak = peaks[n, "float32"]
      peak_source = (
          f"measured float32 {matmul_size}^3 matmul on the "
          f"same {n} device(s)"
      )
    else:
      one = machine.datasheet_peak(devices[0], dtype)
      peak = None if one is None else one * n
      peak_source = "vendor datasheet, dense" if one else "unknown device"
    achieved = flops["train_flops_per_image"] * result["images_per_s"]
    result.update(
        load_average_before=loads[case],
        load_average_after=os.getloadavg(),
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak,
        peak_source=peak_source,
        mfu=None if not peak else achieved / peak,
    )
    log(report_lib.format_row(result))
  report["best_batch"] = report_lib.best_batches(report["results"])
  return report


def benchmark_input(
    num_images: int = 256, passes: int = 3, images_per_pass: int = 512
) -> dict[str, Any]:
  """The training input pipeline's images/s on one core.

  Delegates to benchmarks/input_pipeline.py (imported here: it needs
  TensorFlow, which the model benchmark does not).
  """
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top

  # One thread for TensorFlow's op pools too, as its command line does.
  input_pipeline.limit_tensorflow_threads(1)
  jpegs = input_pipeline.synthetic_jpegs(num_images)
  return input_pipeline.benchmark(
      jpegs, "train", threads=1, passes=passes, images_per_pass=images_per_pass
  )


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def define_flags() -> None:
  """This tool's flags, defined only when it runs (the other benchmarks,
  which it may import, define flags of the same names)."""
  config_flags.DEFINE_config_file(
      "config",
      None,
      "Optional config file with `model` and `optim` sections "
      "(e.g. configs/ilsvrc2010.py:caffe_lrn); default: the paper's model and "
      "optimizer (model.default_config(), optim.default_config()).",
      lock_config=True,
  )
  flags.DEFINE_list(
      "batch_size",
      ["128"],
      "Global batch size, or a list of them to sweep "
      "(e.g. 128,512,2048): the report adds the best one per mesh and dtype.",
  )
  flags.DEFINE_string(
      "meshes",
      "auto",
      "'auto' (1x1, 1x2, then larger data x model shapes "
      "as the devices allow), a list like '1x1,1x2,2x2' (data x model), or "
      "'none' (e.g. with --input only).",
  )
  flags.DEFINE_list(
      "dtypes", ["float32", "bfloat16"], "Compute dtypes (model.dtype) to run."
  )
  flags.DEFINE_integer("steps", 5, "Timed steps (median reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
  flags.DEFINE_integer(
      "cpu_devices",
      2,
      "Fake CPU devices to make before JAX starts (the CPU "
      "backend only; GPUs and TPUs are unaffected). 0: JAX's default (1).",
  )
  flags.DEFINE_integer(
      "matmul_size",
      4096,
      "Side of the float32 matmul that measures the CPU peak.",
  )
  flags.DEFINE_bool(
      "input",
      False,
      "Also time the input pipeline on one core (needs TensorFlow).",
  )
  flags.DEFINE_bool(
      "profile",
      False,
      "Trace 2 steps per case and print the time per op "
      "group (conv/matmul per layer, LRN, pooling, collectives, copies).",
  )
  flags.DEFINE_string(
      "profile_dir",
      None,
      "Where --profile writes traces (default: a temporary directory).",
  )
  flags.DEFINE_bool(
      "interleave",
      False,
      "Compile every case first, then time one step of "
      "each in turn (all cases share the machine's load: the fair comparison "
      "on a shared host; every case must fit in memory at once).",
  )
  flags.DEFINE_string("json", None, "Write the report here as JSON.")


def default_config() -> ml_collections.ConfigDict:
  """The paper's model and optimizer (as configs/ilsvrc2010.py has them)."""
  return ml_collections.ConfigDict(
      dict(model=model_lib.default_config(), optim=optim.default_config())
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.cpu_devices:  # Before JAX initializes a backend.
    jax.config.update("jax_num_cpu_devices", f.cpu_devices)
  config = cli.config_value(f["config"]) or default_config()
  profile_dir = None
  if f.profile:
    profile_dir = f.profile_dir or tempfile.mkdtemp(prefix="alexnet_benchmark_")
  try:
    batch_sizes = [int(b) for b in f.batch_size]
  except ValueError:
    batch_sizes = []
  if not batch_sizes or min(batch_sizes) < 1:
    raise cli.UserError(
        f"--batch_size={','.join(f.batch_size)}: give "
        "positive integers, e.g. --batch_size=128,512."
    )
  report = run(
      config,
      batch_sizes=batch_sizes,
      meshes=f.meshes,
      dtypes=f.dtypes,
      steps=f.steps,
      warmup=f.warmup,
      matmul_size=f.matmul_size,
      profile_dir=profile_dir,
      interleave=f.interleave,
      log=functools.partial(print, flush=True),
  )
  if f.input:
    report["input_pipeline"] = benchmark_input()
  report["load_average_end"] = os.getloadavg()
  report_lib.emit(
      report, "benchmarks.train_step", report_lib.format_report(report), f.json
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
