"""Where the time of a train step goes: a jax.profiler trace, per HLO op.

`profile_steps` traces a few steps of a compiled train step and
`summarize_trace` adds up the time of the program's top-level ops by group:
convolutions and matmuls per layer and direction, LRN, max-pool, dropout
masks, collectives, layout copies and the rest. Ops are named from the
`op_name` metadata XLA keeps from the model: `.../AlexNet/<layer>/...`,
where <layer> is a conv layer's flax module or the name scope of an fc
layer's matmul in model.py, the same names as the parameter tree's. XLA's
weight-gradient convolutions carry no op name and are named by their shape
(`kernel_layers`). A layer, or LRN, whose forward op cannot be found by its
name is an error (`check_names`), so a renamed module or scope in model.py
stops the profile instead of filing the layer's time under another group.
"""

from __future__ import annotations

from collections.abc import Sequence
import collections
import glob
import os
import re
import time
from typing import Any

import jax
import ml_collections

from benchmarks import hlo


class ProfileError(RuntimeError):
  """The compiled program's op names do not name what the profile expects."""


def kernel_layers(
    config: ml_collections.ConfigDict, towers_local: int
) -> dict[tuple[int, ...], str]:
  """Conv layer by the sorted dims of its per-device kernel gradient.

  XLA's weight-gradient convolutions carry no op_name; their result is the
  kernel in some dim order: (k, k, inputs, local towers x outputs) for the
  layers whose towers share one convolution (conv1, conv3), (k, k, inputs
  per tower, outputs) for the one-convolution-per-tower layers (model.py).
  """
  towers = config.num_towers
  c1, c2, c3, c4, c5 = config.conv_features
  inputs = dict(conv1=3, conv2=c1, conv3=towers * c2, conv4=c3, conv5=c4)
  outputs = dict(
      conv1=towers_local * c1,
      conv2=c2,
      conv3=towers_local * c3,
      conv4=c4,
      conv5=c5,
  )
  sizes = dict(conv1=11, conv2=5, conv3=3, conv4=3, conv5=3)
  return {
      tuple(sorted((sizes[n], sizes[n], inputs[n], outputs[n]))): n
      for n in sizes
  }


def _op_category(
    line: str,
    body: str,
    num_devices: int,
    kernels: dict[tuple[int, ...], str] | None = None,
) -> str:
  """A readable group for one top-level HLO op (fusion bodies included)."""
  op_name = re.search(r'op_name="([^"]*)"', line)
  op_name = op_name.group(1) if op_name else ""
  phase = (
      "bwd" if "transpose(" in op_name else "fwd" if "jvp(" in op_name else ""
  )
  opcode = re.search(r"= (?:\(.*?\)|\S+) ([\w\-]+)\(", line)
  opcode = opcode.group(1) if opcode else ""
  if any(opcode.startswith(op) for op in hlo.COLLECTIVE_OPS):
    group = hlo.replica_groups(line, num_devices)[0]
    return "collectives" + (
        " (1-device groups: copies)" if len(group) == 1 else ""
    )
  layer = re.search(r"AlexNet/(conv\d|fc\d)/", op_name)
  layer = layer.group(1) if layer else None
  text = line + body
  # On GPUs XLA calls cuDNN and cuBLAS (custom calls) for convolutions and
  # matmuls. Not yet run on a GPU: check_names stops the profile if these
  # names do not match what XLA prints there.
  if "convolution(" in text or "__cudnn$conv" in text:
    if layer:
      return f"conv {layer} {phase}"
    dims = re.match(r"\s*\S+ = [a-z\d]+\[([\d,]+)\]", line)
    dims = (
        tuple(sorted(int(d) for d in dims.group(1).split(","))) if dims else ()
    )
    return f"conv {(kernels or {}).get(dims, '?')} weight gradient"
  if " dot(" in text or "__cublas" in text:
    return f"matmul {layer} {phase}" if layer else "matmul (other)"
  if "_lrn" in op_name:
    return f"LRN {phase}"
  if (
      "_pool" in op_name
      or "select-and-scatter" in text
      or "reduce-window(" in text
      or opcode == "iota"
      or "iota(" in body
  ):
    return "max-pool (incl. argmax indices for its gradient)"
  if "_dropout" in op_name or "threefry" in text or "rng-bit" in text:
    return "dropout masks"
  if opcode in ("copy", "transpose") or re.search(
      r"(copy|transpose)[\w.]*fusion", line.split("=")[0]
  ):
    return "layout copies / transposes"
  return "other elementwise (ReLU, bias, optimizer, loss)"


def op_groups(
    hlo_text: str,
    num_devices: int,
    kernels: dict[tuple[int, ...], str] | None = None,
) -> dict[str, str]:
  """The group of every top-level op of the compiled program, by op name."""
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  bodies = hlo.computations(hlo_text)
  ops = {}
  for line in entry.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m:
      body = bodies.get(hlo.called(line), "")
      ops[m.group(1)] = _op_category(line, body, num_devices, kernels)
  return ops


def check_names(
    groups: dict[str, str], layers: Sequence[str], lrn: bool = True
) -> None:
  """Raises ProfileError unless every layer's forward op was named.

  `layers`: the model's layers (the keys of its parameter tree); `lrn`:
  whether the model has LRN layers. `groups` as from `op_groups`.
  """
  found = set(groups.values())
  missing = [
      layer
      for layer in layers
      if f"conv {layer} fwd" not in found and f"matmul {layer} fwd" not in found
  ]
  if lrn and "LRN fwd" not in found:
    missing.append("LRN")
  if missing:
    raise ProfileError(
        f"no forward op of {missing} found by name in the compiled train "
        "step: the profile reads a layer from op names '.../AlexNet/<layer>/"
        "...' (conv modules and the fc matmuls' name scopes in "
        "alexnet_jax/model.py) and LRN from '_lrn'. Was one renamed? Groups "
        f"found: {sorted(found)}"
    )


def profile_steps(
    compiled: Any,
    state: Any,
    batch: Any,
    hlo_text: str,
    log_dir: str,
    num_devices: int,
    layers: Sequence[str],
    lrn: bool = True,
    num_steps: int = 2,
    kernels: dict[tuple[int, ...], str] | None = None,
) -> dict[str, Any]:
  """Traces `num_steps` steps with jax.profiler; see `summarize_trace`.

  `layers` and `lrn` are checked first (`check_names`). Adds the wall time
  per step and `outside_ops_s_per_step`: wall x CPUs minus the time in
  ops' events, where XLA:CPU's Eigen convolutions run (their events cover
  only their launch) and threads idle.
  """
  check_names(op_groups(hlo_text, num_devices, kernels), layers, lrn)
  jax.profiler.start_trace(log_dir)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  wall = (time.perf_counter() - start) / num_steps
  jax.profiler.stop_trace()
  trace = sorted(
      glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True),
      key=os.path.getmtime,
  )[-1]
  summary = summarize_trace(trace, hlo_text, num_devices, num_steps, kernels)
  cpus = os.cpu_count() or 1  # As the report's cpus_visible.
  # On CPU, XLA's own (Eigen) convolutions run on the thread pool after the
  # event that starts them ends: their groups show the launch only, and
  # their time is in what no op's event covers (with idle threads).
  summary.update(
      wall_s_per_step=wall,
      trace=trace,
      cpus=cpus,
      outside_ops_s_per_step=max(0.0, wall * cpus - summary["busy_s_per_step"]),
  )
  return summary


def summarize_trace(
    trace: str,
    hlo_text: str,
    num_devices: int,
    num_steps: int,
    kernels: dict[tuple[int, ...], str] | None = None,
) -> dict[str, Any]:
  """Time per op group of a trace of `num_steps` steps of `hlo_text`.

  Sums the durations of the trace events named like the program's
  top-level ops, over all threads: on CPU this is the time threads spent
  in each group (including time descheduled by other jobs), so
  `busy_s_per_step` over the wall time is the average number of busy
  threads.
  """
  ops = op_groups(hlo_text, num_devices, kernels)
  busy = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(trace).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in ops:
          busy[ops[event.name]] += event.duration_ns / 1e9 / num_steps
  return {
      "busy_s_per_step": sum(busy.values()),
      "busy_s_by_group": dict(busy.most_common()),
  }
