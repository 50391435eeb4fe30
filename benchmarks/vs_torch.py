"""alexnet_jax's train step against PyTorch's, on the same CPU cores.

    pip install torch   # this benchmark's own dependency
    python -m benchmarks.vs_torch --batch_size=128 --rounds=7

Cases: alexnet_jax's compiled train step on each `--meshes` shape (the
paper's model and §5 optimizer, `train_step.TrainStepCase`), and the same
network and update rule in PyTorch (`torch_alexnet.py`), eager and under
`torch.compile`. All start from the same weights; before timing, the
PyTorch net's test-time logits are checked against alexnet_jax's on the
same images (a different network would stop the benchmark). Then every case
is compiled and warmed up, and the rounds time one step of each case in
turn, so that all of them see the same load; the report gives each case's
median step and, per round, its speed relative to the reference case
(`--reference`, default torch.compile), as the median over rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import os
import platform
import statistics
import time
from typing import Any

from absl import flags
import jax
import numpy as np

from alexnet_jax import cli
from alexnet_jax import model as model_lib
from alexnet_jax import weights
from benchmarks import machine
from benchmarks import report as report_lib
from benchmarks import train_step


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise cli.UserError(
        "benchmarks.vs_torch needs PyTorch, which alexnet_jax does not "
        "install: pip install torch"
    ) from e
  return torch


class TorchCase:
  """PyTorch's train step (eager or compiled), timed step by step."""

  def __init__(self, arrays, batch, compiled: bool, threads: int):
    torch = _torch()
    from benchmarks import torch_alexnet  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(threads)
    self.torch = torch
    self.model = torch_alexnet.AlexNet(arrays)
    optimizer = torch_alexnet.PaperSGD(self.model)
    step = torch_alexnet.train_step_fn(self.model, optimizer)
    if compiled:
      self.model.forward = torch.compile(self.model.forward)
      optimizer.step = torch.compile(optimizer.step)
    self.step_fn = step
    self.images = torch.from_numpy(
        np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))
    )
    self.labels = torch.from_numpy(batch["label"].astype(np.int64))
    self.wall: list[float] = []
    self.loss = None
    self.compile_s = None

  def first_step(self) -> None:
    """The first step, untimed; `compile_s` is its time (torch.compile
    compiles then)."""
    start = time.perf_counter()
    self.step(timed=False)
    self.compile_s = time.perf_counter() - start

  def step(self, timed: bool = True) -> None:
    start = time.perf_counter()
    self.loss = float(self.step_fn(self.images, self.labels))
    if timed:
      self.wall.append(time.perf_counter() - start)

  def logits(self, images_nhwc: np.ndarray) -> np.ndarray:
    with self.torch.no_grad():
      x = self.torch.from_numpy(
          np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
      )
      return self.model(x, train=False).numpy()


def check_same_network(config, jax_case, arrays, images, torch_case) -> float:
  """The largest |logit difference| / max |logit| between alexnet_jax and
  the PyTorch net at test time on `images`; stops if it is not round-off."""
  apply = jax.jit(model_lib.make_apply(config.model, jax_case.mesh))
  params = weights.from_caffe_layout(arrays, jax_case.state.params)
  ours = np.asarray(apply(params, images))
  theirs = torch_case.logits(images)
  error = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)))
  if not error < 1e-3:
    raise RuntimeError(
        f"the PyTorch net is not alexnet_jax's: logits differ by {error:.2e} "
        "of their largest value"
    )
  return error


def run(
    config,
    *,
    batch_size: int,
    meshes: Sequence[tuple[int, int]],
    rounds: int,
    warmup: int,
    torch_modes: Sequence[str],
    reference: str,
    log=print,
) -> dict[str, Any]:
  torch = _torch()
  threads = os.cpu_count() or 1
  batch = train_step.random_batch(config, batch_size)
  cases: dict[str, Any] = {}
  for shape in meshes:
    name = f"jax {shape[0]}x{shape[1]}"
    log(f"{name}: compiling ...")
    # Its batch is `batch` (train_step.random_batch, the same seed).
    cases[name] = train_step.TrainStepCase(config, shape, batch_size)
  first = next(iter(cases.values()))
  arrays = weights.to_caffe_layout(first.state.params)
  for mode in torch_modes:
    name = f"torch {mode}"
    log(f"{name}: {'compiling' if mode == 'compile' else 'first step'} ...")
    cases[name] = TorchCase(arrays, batch, mode == "compile", threads)
  torch_cases = {n: c for n, c in cases.items() if n.startswith("torch")}
  # Before any step (each changes its case's weights).
  error = check_same_network(
      config,
      first,
      arrays,
      batch["image"][:8],
      next(iter(torch_cases.values())),
  )
  log(f"same network: test-time logits agree to {error:.1e} (relative)")
  for case in torch_cases.values():
    case.first_step()
  for case in cases.values():
    for _ in range(warmup):
      case.step(timed=False)
  load = os.getloadavg()
  log(f"timing {rounds} rounds of one step per case, load {load[0]:.2f} ...")
  for _ in range(rounds):
    for case in cases.values():
      case.step()
  if reference not in cases:
    reference = next(iter(cases))
  results = []
  for name, case in cases.items():
    median = statistics.median(case.wall)
    results.append(
        dict(
            case=name,
            compile_s=(
                case.compile_s
                if isinstance(case, TorchCase)
                else case.lower_s + case.compile_s
            ),
            step_s_median=median,
            step_s=case.wall,
            images_per_s=batch_size / median,
            # > 1: faster than the reference; paired by round.
            speed_vs_reference=statistics.median(
                r / c for r, c in zip(cases[reference].wall, case.wall)
            ),
        )
    )
  return dict(
      batch_size=batch_size,
      dtype=config.model.dtype,
      num_params=model_lib.count_params(first.state.params),
      cpu=machine.cpu_model(),
      cpus_visible=os.cpu_count(),
      torch_threads=threads,
      jax=jax.__version__,
      torch=torch.__version__,
      python=platform.python_version(),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      reference=reference,
      rounds=rounds,
      load_average_before=load,
      load_average_after=os.getloadavg(),
      logits_relative_difference=error,
      results=results,
  )


def format_report(report: dict[str, Any]) -> str:
  lines = [
      f"{report['cpu']}, {report['cpus_visible']} cores; jax "
      f"{report['jax']}, torch {report['torch']}; batch "
      f"{report['batch_size']} {report['dtype']}; median of "
      f"{report['rounds']} interleaved rounds",
      f"{'case':<16} {'compile s':>9} {'s/step':>8} {'images/s':>9} "
      f"{'speed vs ' + report['reference']:>24}",
  ]
  for r in report["results"]:
    lines.append(
        f"{r['case']:<16} {r['compile_s']:9.1f} {r['step_s_median']:8.3f} "
        f"{r['images_per_s']:9.1f} {r['speed_vs_reference']:23.3f}x"
    )
  return "\n".join(lines)


def define_flags() -> None:
  flags.DEFINE_integer("batch_size", 128, "Global batch size.")
  flags.DEFINE_list("meshes", ["1x1", "1x2"], "alexnet_jax's mesh shapes.")
  flags.DEFINE_list(
      "torch_modes", ["eager", "compile"], "PyTorch cases: eager, compile."
  )
  flags.DEFINE_string(
      "reference", "torch compile", "The case the speeds are relative to."
  )
  flags.DEFINE_integer("rounds", 7, "Timed rounds (one step of each case).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps of each case first.")
  flags.DEFINE_integer("cpu_devices", 2, "Fake CPU devices for JAX.")
  flags.DEFINE_string("json", None, "Write the report here as JSON.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  jax.config.update("jax_num_cpu_devices", f.cpu_devices)
  try:
    meshes = [tuple(int(n) for n in m.split("x")) for m in f.meshes]
    assert all(len(m) == 2 and min(m) >= 1 for m in meshes)
  except (ValueError, AssertionError):
    raise cli.UserError(  # pylint: disable=raise-missing-from
        f"--meshes={','.join(f.meshes)}: give data x model shapes, e.g. "
        "--meshes=1x1,1x2."
    )
  bad = set(f.torch_modes) - {"eager", "compile"}
  if bad:
    raise cli.UserError(
        f"--torch_modes: {sorted(bad)} unknown; use eager and/or compile."
    )
  if f.rounds < 1 or f.batch_size < 1:
    raise cli.UserError("--rounds and --batch_size must be positive.")
  _torch()  # A clear message before minutes of compiling.
  report = run(
      train_step.default_config(),
      batch_size=f.batch_size,
      meshes=meshes,
      rounds=f.rounds,
      warmup=f.warmup,
      torch_modes=f.torch_modes,
      reference=f.reference,
      log=functools.partial(print, flush=True),
  )
  report_lib.emit(report, "benchmarks.vs_torch", format_report(report), f.json)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
