"""The train-step benchmark's report as text: the table and per-case lines.

`train_step.run` returns the report as JSON-able data; `format_report`
prints it, `best_batches` picks the fastest batch of a sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
import collections
import json
import sys
from typing import Any

from benchmarks import costs


def best_batches(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The fastest batch size of each (mesh, dtype) that ran several."""
  groups = collections.defaultdict(list)
  for r in results:
    if "images_per_s" in r:
      groups[r["mesh"], r["dtype"]].append(r)
  best = []
  for (mesh, dtype), group in groups.items():
    if len(group) > 1:
      fastest = max(group, key=lambda r: r["images_per_s"])
      best.append(
          dict(
              mesh=mesh,
              dtype=dtype,
              batch_size=fastest["batch_size"],
              images_per_s=fastest["images_per_s"],
              batch_sizes=[r["batch_size"] for r in group],
          )
      )
  return best


_COLUMNS = (
    ("mesh", 5),
    ("dev", 3),
    ("dtype", 8),
    ("batch", 5),
    ("compile_s", 9),
    ("step_s", 7),
    ("img/s", 7),
    ("img/cpu_s", 9),
    ("TFLOP/s", 7),
    ("MFU", 6),
    ("coll_MB_hlo", 11),
    ("coll_MB_min", 11),
    ("load", 5),
)


def _row(values: Sequence[str]) -> str:
  return " ".join(f"{v:>{w}}" for v, (_, w) in zip(values, _COLUMNS))


def format_row(r: dict[str, Any]) -> str:
  """One line of the results table (collectives: MB per device per step)."""
  if "error" in r:
    return _row(
        [
            r["mesh"],
            "",
            r["dtype"].replace("bfloat16", "bf16"),
            str(r["batch_size"]),
            r["error"],
        ]
    )
  mfu = r.get("mfu")
  return _row(
      [
          r["mesh"],
          str(r["devices"]),
          r["dtype"].replace("bfloat16", "bf16"),
          str(r["batch_size"]),
          f"{r['lower_plus_compile_s']:.1f}",
          f"{r['step_s_median']:.2f}",
          f"{r['images_per_s']:.1f}",
          f"{r['images_per_cpu_s']:.1f}",
          f"{r.get('achieved_flops_per_s', 0.0) / 1e12:.3f}",
          "-" if mfu is None else f"{100 * mfu:.1f}%",
          f"{r['collective_bytes_sent_per_device']['total'] / 1e6:.3f}",
          f"{r['analytic_collective_bytes_per_device']['total'] / 1e6:.3f}",
          f"{r.get('load_average_before', (float('nan'),))[0]:.1f}",
      ]
  )


def format_report(report: dict[str, Any]) -> str:
  """The printed report: FLOPs, the results table, per-case details."""
  flops = report["analytic_flops"]
  lines = [
      f"{report['backend']} x{report['num_devices']} "
      f"({report['device_kind']}); CPU {report['cpu']}; jax "
      f"{report['jax']}; {report['num_params']:,} parameters",
      "Analytic forward multiply-adds per image: "
      + ", ".join(
          f"{k} {v / 1e6:.1f}M"
          for k, v in flops["forward_macs_per_layer"].items()
      )
      + f"; total {flops['forward_macs_per_image']:,} "
      f"({flops['forward_macs_per_image'] / costs.PAPER_FORWARD_MACS:.4f} "
      "x the 724M commonly quoted)",
      f"FLOPs per image: forward {flops['forward_flops_per_image'] / 1e9:.3f}"
      f" G ({flops['forward_flops_per_image_without_padding'] / 1e9:.3f} G "
      f"without taps on zero padding); train step (3x) "
      f"{flops['train_flops_per_image'] / 1e9:.3f} G (exact, no conv1 input "
      f"gradient: {flops['train_flops_per_image_exact'] / 1e9:.3f} G)",
      "",
      _row([name for name, _ in _COLUMNS]),
  ]
  lines += [format_row(r) for r in report["results"]]
  if report["results"]:
    lines += [
        "step_s: median wall time per step (each step blocked on); "
        "img/cpu_s: images per CPU-second of the process; MFU: analytic "
        "train FLOPs (3x forward) x img/s / peak; coll_MB: MB each device "
        "sends per step, from the compiled HLO and the analytic minimum; "
        "load: 1-min load average before the case.",
        "",
    ]
  for best in report.get("best_batch", ()):
    lines.append(
        f"best batch, {best['mesh']} {best['dtype']}: {best['batch_size']} "
        f"({best['images_per_s']:.1f} images/s; of {best['batch_sizes']})"
    )
  if report.get("best_batch"):
    lines.append("")
  if any("speed_vs_first_case" in r for r in report["results"]):
    first = report["results"][0]
    lines += [
        f"interleaved: speed relative to {first['mesh']} "
        f"{first['dtype']} batch {first['batch_size']} (median over "
        "rounds of its step time / this case's): "
        + ", ".join(
            f"{r['mesh']} {r['dtype']} batch {r['batch_size']} "
            f"{r['speed_vs_first_case']:.3f}x"
            for r in report["results"]
            if "speed_vs_first_case" in r
        ),
        "",
    ]
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
        f"/device; step times {[round(x, 2) for x in r['step_s']]} s"
    )
    for c in r["collectives"]:
      if c["sent_bytes"]:
        lines.append(
            f"    {c['axis']:5s} {c['phase']:8s} {c['op']:15s} "
            f"{' '.join(c['types'])[:50]:50s} group "
            f"{c['group_size']} sends {c['sent_bytes'] / 1e6:.3f} MB"
        )
    if r.get("profile"):
      p = r["profile"]
      lines.append(
          f"    profile: {p['wall_s_per_step']:.2f} s/step wall, "
          f"{p['busy_s_per_step']:.2f} s in ops (summed over "
          "threads):"
      )
      for group, seconds in p["busy_s_by_group"].items():
        share = 100 * seconds / p["busy_s_per_step"]
        lines.append(f"      {seconds:7.3f} s {share:5.1f}%  {group}")
      lines.append(
          f"      {p['outside_ops_s_per_step']:7.3f} s outside any op's trace"
          f" event ({p['cpus']} CPUs x wall - the above): XLA:CPU's Eigen "
          "convolutions, whose events cover only their launch, and idle "
          "threads"
      )
  if report.get("input_pipeline"):
    i = report["input_pipeline"]
    lines.append(
        f"Input pipeline, training transforms, {i['threads']} tf.data "
        f"thread, batch {i['batch_size']}: {i['images_per_s']:.1f} images/s "
        f"median, {i['images_per_cpu_s']:.1f} per CPU-second, best pass "
        f"{i['best_images_per_s']:.1f} (benchmarks/input_pipeline.py)"
    )
  return "\n".join(lines)


def emit(report: dict[str, Any], tool: str, text: str, json_path: str | None):
  """A benchmark command's ending: records its command line in `report`,
  prints `text` (the report as a table) and writes `report` to `json_path`
  (None: nowhere)."""
  report["command"] = " ".join([f"python -m {tool}"] + sys.argv[1:])
  print()
  print(text)
  if json_path:
    with open(json_path, "w", encoding="utf-8") as out:
      json.dump(report, out, indent=2, default=float)
    print(f"wrote {json_path}")
