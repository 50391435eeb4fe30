"""The collectives of a compiled program, read from its HLO text.

JAX exposes a compiled program as HLO text (`jax.jit(f).lower(...).compile()
.as_text()`); it has no stable structured view of the collectives a program
runs. This module is the project's one reader of that text: the test of where
the towers communicate (tests/test_parallel.py) and the train-step
benchmark's byte counts (train_step.py) both use it. Training does not, so
it lives with the benchmarks, outside the installed package.

XLA has printed a collective's device groups (`replica_groups=`) in three
forms, all read here:

  explicit   {{0,1},{2,3}}                      (jax 0.4 - 0.10)
  iota       [2,2]<=[4]  or  [2,2]<=[2,2]T(1,0) (jax 0.4 - 0.10)
  mesh       mesh['data'=2,'model'=2] {'model'} (jax >= 0.11)

The mesh form names the mesh axes the group spans; `device_ids=(...)` after
the axis sizes gives a device order other than 0, 1, 2, ... and an axis
written `'model':(1)2` is a sub-axis (pre-size 1, size 2). A form this module
does not know raises `HloParseError` instead of being skipped, so a new XLA
cannot make a test that counts collectives pass by finding none.
"""

from __future__ import annotations

from collections.abc import Sequence
import collections
import math
import re
from typing import Any

import numpy as np

COLLECTIVE_OPS = (
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "collective-permute",
    "all-to-all",
)

BYTES_PER_DTYPE = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
}


class HloParseError(ValueError):
  """HLO text in a form this reader does not know (name the line)."""


# `%name = TYPE all-gather(` (or `-start(`) where TYPE is an array type or a
# (possibly nested) tuple of them, e.g. `(f32[2,3]{1,0}, f32[4]{0})`.
_COLLECTIVE_RE = re.compile(
    r"^[ \t]*(?:ROOT )?%?(?P<name>[\w.\-]+) = (?P<type>[^\n]*?) "
    r"(?P<op>" + "|".join(COLLECTIVE_OPS) + r")(?P<start>-start)?\(",
    re.M,
)
_ARRAY_RE = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_EXPLICIT_RE = re.compile(r"\{(\{[\d,]*\}(?:,\{[\d,]*\})*)?\}")
_IOTA_RE = re.compile(r"\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_MESH_RE = re.compile(
    r"mesh\[(?P<axes>[^\]]*)\](?:, device_ids=\((?P<ids>[^)]*)\))?"
    r" \{(?P<group>[^}]*)\}"
)
_MESH_AXIS_RE = re.compile(r"'?(?P<name>[^'=,]+)'?=(?P<size>\d+)")
_GROUP_AXIS_RE = re.compile(
    r"'?(?P<name>[^':,]+)'?(?::\((?P<pre>\d+)\)(?P<size>\d+))?"
)


_COMPUTATION_RE = re.compile(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
_CALLS_RE = re.compile(r"calls=%?([\w.\-]+)")


def computations(hlo_text: str) -> dict[str, str]:
  """The body of every computation of the program (fusions included), by
  name."""
  return {m.group(1): m.group(2) for m in _COMPUTATION_RE.finditer(hlo_text)}


def called(line: str) -> str | None:
  """The computation an op's line calls (`calls=`), or None."""
  m = _CALLS_RE.search(line)
  return m.group(1) if m else None


def _ints(text: str) -> list[int]:
  return [int(i) for i in re.findall(r"\d+", text)]


def _mesh_groups(m: re.Match[str]) -> list[list[int]]:
  """Device groups of the mesh form (see the module docstring)."""
  axes = [
      (a["name"], int(a["size"])) for a in _MESH_AXIS_RE.finditer(m["axes"])
  ]
  names = [name for name, _ in axes]
  sizes = [size for _, size in axes]
  ids = np.array(_ints(m["ids"])) if m["ids"] else np.arange(math.prod(sizes))
  # Split every mesh axis into (pre, size, post) so that a sub-axis is a
  # dimension of its own; a full axis is (1, size, 1).
  split = [(1, size, 1) for size in sizes]
  grouped = []
  for g in _GROUP_AXIS_RE.finditer(m["group"]):
    if g["name"] not in names:
      raise HloParseError(
          f"replica group axis {g['name']!r} is not a mesh axis {names}"
      )
    i = names.index(g["name"])
    if g["pre"]:
      pre, size = int(g["pre"]), int(g["size"])
      split[i] = (pre, size, sizes[i] // (pre * size))
    grouped.append(i)
  ids = ids.reshape([d for s in split for d in s])
  # Dimension 3i+1 holds axis i's (sub-)axis; group over those of `grouped`,
  # in the printed order, and enumerate groups over all other dimensions.
  group_dims = [3 * i + 1 for i in grouped]
  other = [d for d in range(ids.ndim) if d not in group_dims]
  group_size = math.prod(ids.shape[d] for d in group_dims)
  return ids.transpose(other + group_dims).reshape(-1, group_size).tolist()


def replica_groups(line: str, num_devices: int) -> list[list[int]]:
  """The device groups of one collective's HLO line (logical device ids).

  No `replica_groups=` or an empty `{}` means one group of all devices.
  Raises HloParseError for a form not described in the module docstring.
  """
  start = line.find("replica_groups=")
  if start < 0:
    return [list(range(num_devices))]
  text = line[start + len("replica_groups=") :]
  if m := _MESH_RE.match(text):
    return _mesh_groups(m)
  if m := _IOTA_RE.match(text):
    ids = np.arange(num_devices).reshape(_ints(m[3]))
    if m[4]:
      ids = ids.transpose(_ints(m[4]))
    return ids.reshape(int(m[1]), int(m[2])).tolist()
  if m := _EXPLICIT_RE.match(text):
    if not m[1]:
      return [list(range(num_devices))]
    return [_ints(g) for g in re.findall(r"\{[\d,]*\}", m[1])]
  raise HloParseError(
      f"unknown replica_groups form in HLO line: {line.strip()[:300]}"
  )


def mesh_axis(group: Sequence[int], mesh_shape: tuple[int, int]) -> str:
  """Which mesh axis a device group spans ("model", "data" or "none").

  Logical ids number the mesh's devices row-major: a row of the data x
  model grid is a tower pair, a column one tower's data-parallel replicas.
  """
  if len(group) <= 1:
    return "none"
  grid = np.arange(math.prod(mesh_shape)).reshape(mesh_shape)
  row, column = np.argwhere(grid == group[0])[0]
  if sorted(group) == sorted(grid[row].tolist()):
    return "model"
  if sorted(group) == sorted(grid[:, column].tolist()):
    return "data"
  return "data+model"


def _tuple_elements(hlo_type: str) -> list[str]:
  """Top-level elements of a tuple type "(a, (b, c), d)"; [type] if none."""
  if not hlo_type.startswith("("):
    return [hlo_type]
  elements, depth, start = [], 0, 1
  for i, char in enumerate(hlo_type):
    if char in "({[":
      depth += 1
    elif char in ")}]":
      depth -= 1
    if (char == "," and depth == 1) or (char == ")" and depth == 0):
      elements.append(hlo_type[start:i].strip())
      start = i + 1
  return elements


def bytes_sent(op: str, result_bytes: int, group: int) -> float:
  """Bytes one device sends with a bandwidth-optimal (ring) algorithm.

  all-gather: (n-1)/n of the result; reduce-scatter: (n-1) x its shard (the
  result); all-reduce: 2 (n-1)/n (reduce-scatter + all-gather; = S for n=2,
  as in parallel.py's table); all-to-all (n-1)/n; collective-permute: the
  result. One-device groups move nothing (XLA keeps some, see below).
  """
  if group <= 1:
    return 0.0
  n = group
  return {
      "all-gather": result_bytes * (n - 1) / n,
      "reduce-scatter": result_bytes * (n - 1),
      "all-reduce": 2 * result_bytes * (n - 1) / n,
      "all-to-all": result_bytes * (n - 1) / n,
      "collective-permute": result_bytes,
  }[op]


def collectives(
    hlo_text: str, mesh_shape: tuple[int, int]
) -> list[dict[str, Any]]:
  """Every collective of a compiled (per-device) HLO module, in text order.

  Returns dicts with name, op, result types, the device groups, group size,
  the mesh axis the groups span, result bytes, bytes sent per device
  (`bytes_sent`), and phase ("backward" when XLA's op_name metadata says it
  came from a transpose, i.e. the gradient). XLA keeps some collectives over
  one-device groups (e.g. the gradient psum over a data axis of size 1):
  they send 0 bytes.
  """
  num_devices = math.prod(mesh_shape)
  found = []
  for m in _COLLECTIVE_RE.finditer(hlo_text):
    line = hlo_text[m.start() : hlo_text.find("\n", m.end())]
    result_type = m["type"]
    if m["start"] and m["op"] in ("all-gather", "collective-permute"):
      # Async start ops return (operands, results[, context]).
      result_type = _tuple_elements(result_type)[1]
    arrays = [
        (a["dtype"], tuple(int(d) for d in a["dims"].split(",") if d))
        for a in _ARRAY_RE.finditer(result_type)
    ]
    result_bytes = sum(
        BYTES_PER_DTYPE[dt] * math.prod(dims) for dt, dims in arrays
    )
    groups = replica_groups(line, num_devices)
    op_name = re.search(r'op_name="([^"]*)"', line)
    op_name = op_name.group(1) if op_name else ""
    found.append(
        {
            "name": m["name"],
            "op": m["op"],
            "types": [
                f"{dt}[{','.join(map(str, dims))}]" for dt, dims in arrays
            ],
            "groups": groups,
            "group_size": len(groups[0]),
            "axis": mesh_axis(groups[0], mesh_shape),
            "result_bytes": result_bytes,
            "sent_bytes": bytes_sent(m["op"], result_bytes, len(groups[0])),
            "phase": "backward" if "transpose(" in op_name else "forward",
        }
    )
  return found


def summarize(found: Sequence[dict[str, Any]]) -> dict[str, float]:
  """Bytes sent per device per step: model axis forward / backward, data."""
  total = collections.Counter()
  for c in found:
    if c["axis"] == "model":
      total[
          "model_forward" if c["phase"] == "forward" else "model_backward"
      ] += c["sent_bytes"]
    elif c["axis"] != "none":
      total["data"] += c["sent_bytes"]
  result = {
      k: float(total[k]) for k in ("model_forward", "model_backward", "data")
  }
  result["total"] = sum(result.values())
  return result
