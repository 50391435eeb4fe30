"""The ablation study's numbers: paired differences, the paper's claims, the
report (`ablation.md`) and its plot (`ablation.png`).

ablate.py runs the study (one training run per variant and seed) and hands
the runs' results to `analyze`, `markdown` and `plot`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from scipy import stats

PAPER = "paper"
# (metric, crops) pairs read from results.json.
METRICS = (
    ("top1_error", "center"),
    ("top1_error", "ten"),
    ("top5_error", "center"),
    ("top5_error", "ten"),
)


@dataclasses.dataclass(frozen=True)
class Claim:
  """What the paper says removing a component costs (variant - paper).

  top1/top5: the claimed increase of the error in percentage points (None:
  no number). relation: "=" (stated), ">" (at least), "~" (about).
  """

  section: str
  top1: float | None
  top5: float | None
  text: str
  relation: str = "="

  def format(self) -> str:
    if self.top1 is None and self.top5 is None:
      return "no number"
    sign = {"=": "", ">": "> ", "~": "~ "}[self.relation]
    cells = [
        "n/a" if v is None else f"{sign}+{v:g}" for v in (self.top1, self.top5)
    ]
    return " / ".join(cells)


# The paper's claims, keyed by variant (the config argument that removes
# the component).
CLAIMS = {
    "one_gpu": Claim(
        "§3.2",
        1.7,
        1.2,
        "two towers beat the one-GPU net of footnote 2 "
        "(half the kernels) by 1.7 top-1 / 1.2 top-5",
    ),
    "no_lrn": Claim(
        "§3.3",
        1.4,
        1.2,
        "response normalization reduces top-1 / top-5 error by 1.4 / 1.2",
    ),
    "no_overlap": Claim(
        "§3.4",
        0.4,
        0.3,
        "overlapping pooling (3/2 vs "
        "2/2) reduces top-1 / top-5 error by 0.4 / 0.3",
    ),
    "no_pca": Claim(
        "§4.1",
        1.0,
        None,
        "PCA lighting reduces top-1 error by over 1",
        relation=">",
    ),
    "no_dropout": Claim(
        "§4.2",
        None,
        None,
        "without dropout the network "
        "overfits substantially (no error number)",
    ),
    "tanh": Claim(
        "§3.1",
        None,
        None,
        "Figure 1: ReLUs reach 25% training "
        "error on CIFAR-10 6x faster than tanh (no test error "
        "difference claimed)",
    ),
    "no_conv4": Claim(
        "§7",
        2.0,
        None,
        "removing any middle layer costs about 2 top-1",
        relation="~",
    ),
}


# ---------------------------------------------------------------------------
# Statistics.
# ---------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, Any]:
  """Mean and sample standard deviation (None with fewer than 2 values)."""
  v = np.asarray(values, np.float64)
  return dict(
      n=len(v),
      values=[float(x) for x in v],
      mean=float(v.mean()) if len(v) else None,
      std=float(v.std(ddof=1)) if len(v) > 1 else None,
  )


def paired_difference(
    variant: dict[int, float], paper: dict[int, float]
) -> dict[str, Any]:
  """variant - paper over the seeds both have: mean and 95% t-interval.

  Args:
    variant: seed -> value (an error) of the variant.
    paper: seed -> value of `paper` with the same seed.

  Returns:
    {"n", "seeds", "differences", "mean", "std", "ci95"}; ci95 is [lo, hi]
    (mean +- t_{0.975, n-1} * std / sqrt(n)), None with fewer than 2 pairs.
  """
  seeds = sorted(set(variant) & set(paper))
  d = np.asarray([variant[s] - paper[s] for s in seeds], np.float64)
  out = dict(
      n=len(d),
      seeds=seeds,
      differences=[float(x) for x in d],
      mean=float(d.mean()) if len(d) else None,
      std=None,
      ci95=None,
  )
  if len(d) > 1:
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(d) - 1)) * std / math.sqrt(len(d))
    out.update(std=std, ci95=[out["mean"] - half, out["mean"] + half])
  return out


def reading(diff: dict[str, Any]) -> str:
  """Plain words for a difference: within noise, worse or better."""
  if diff["ci95"] is None:
    return "n/a (under 2 seeds)" if diff["n"] else "n/a (no runs)"
  lo, hi = diff["ci95"]
  if lo <= 0 <= hi:
    return "within noise"
  return "worse than paper" if lo > 0 else "better than paper"


def analyze(
    runs: dict[str, dict[int, dict[str, Any]]],
    split: str,
    variants: Sequence[str],
) -> dict[str, Any]:
  """Per variant: error statistics and paired differences from `paper`.

  Args:
    runs: variant -> seed -> results.json contents (finished runs only).
    split: the evaluations' split to read.
    variants: the order of the output.

  Returns:
    variant -> {"errors": {metric: summary}, "vs_paper": {metric: paired
    difference}, "claim": ...}; errors and differences are fractions.
  """

  def values(variant):
    out = {}
    for metric, crops in METRICS:
      out[f"{metric}_{crops}"] = {
          seed: r["evaluations"][split][crops][metric]
          for seed, r in sorted(runs.get(variant, {}).items())
      }
    return out

  paper = values(PAPER)
  table = {}
  for variant in variants:
    v = values(variant)
    entry = dict(errors={k: summarize(list(s.values())) for k, s in v.items()})
    if variant != PAPER:
      entry["vs_paper"] = {
          k: paired_difference(s, paper[k]) for k, s in v.items()
      }
      claim = CLAIMS.get(variant)
      entry["claim"] = (
          (dataclasses.asdict(claim) | dict(formatted=claim.format()))
          if claim
          else None
      )
    table[variant] = entry
  return table


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------


def _mean_std(s: dict[str, Any]) -> str:
  if s["mean"] is None:
    return "n/a"
  if s["std"] is None:
    return f"{100 * s['mean']:.2f}"
  return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def _diff(d: dict[str, Any]) -> str:
  if d["mean"] is None:
    return "n/a"
  if d["ci95"] is None:
    return f"{100 * d['mean']:+.2f} [n/a]"
  lo, hi = d["ci95"]
  return f"{100 * d['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def markdown(study: dict[str, Any]) -> str:
  """The two tables: errors per variant, differences from `paper`."""
  table = study["variants"]
  lines = [
      f"Ablation of `{study['config']}` on the {study['split']} split, "
      f"seeds {study['seeds']}; errors in %.",
      "",
      "| variant | seeds | top-1 1-crop | top-1 10-crop | top-5 1-crop | "
      "top-5 10-crop |",
      "|---|---|---|---|---|---|",
  ]
  for variant, entry in table.items():
    e = entry["errors"]
    lines.append(
        f"| {variant} | {e['top1_error_center']['n']} | "
        + " | ".join(_mean_std(e[f"{m}_{c}"]) for m, c in METRICS)
        + " |"
    )
  lines += [
      "",
      "Difference from `paper` (variant - paper, percentage points; + means "
      "the component helps), mean over paired seeds [95% t-interval]:",
      "",
      "| variant | paper's claim top-1 / top-5 | top-1 10-crop | "
      "top-5 10-crop | top-1 1-crop | top-5 1-crop | pairs | top-1 "
      "10-crop reads |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for variant, entry in table.items():
    if variant == PAPER:
      continue
    d = entry["vs_paper"]
    claim = entry["claim"]
    claim_cell = (
        f"{claim['formatted']} ({claim['section']})" if claim else "none"
    )
    lines.append(
        f"| {variant} | {claim_cell} | "
        + " | ".join(
            _diff(d[k])
            for k in (
                "top1_error_ten",
                "top5_error_ten",
                "top1_error_center",
                "top5_error_center",
            )
        )
        + f" | {d['top1_error_ten']['n']} | {reading(d['top1_error_ten'])} |"
    )
  return "\n".join(lines) + "\n"


def _font(size: int) -> Any:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size.
    return ImageFont.load_default()


def plot(study: dict[str, Any], path: str) -> None:
  """Differences from `paper` (10 crops) with intervals and the claims."""
  rows = [(v, e) for v, e in study["variants"].items() if v != PAPER]
  panels = (("top1_error_ten", "top-1"), ("top5_error_ten", "top-5"))
  # Axis range: every mean, interval end and claim, and 0.
  xs = [0.0]
  for v, e in rows:
    for key, _ in panels:
      d = e["vs_paper"][key]
      xs += [
          100 * x
          for x in ([d["mean"]] if d["mean"] is not None else [])
          + (d["ci95"] or [])
      ]
    claim = CLAIMS.get(v)
    xs += [
        x for x in ((claim.top1, claim.top5) if claim else ()) if x is not None
    ]
  lo, hi = min(xs), max(xs)
  pad = max(0.5, 0.08 * (hi - lo))
  lo, hi = lo - pad, hi + pad
  label_w, panel_w, row_h, top, gap = 150, 380, 34, 70, 30
  width = label_w + 2 * panel_w + 3 * gap
  height = top + row_h * max(len(rows), 1) + 80
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  font, small = _font(15), _font(12)
  draw.text(
      (gap, 10),
      f"Difference from paper, 10 crops, "
      f"{study['split']} ({study['config']}; {len(study['seeds'])} "
      "seeds)",
      fill="black",
      font=font,
  )
  draw.text(
      (gap, 32),
      "blue: mean and 95% interval over paired seeds;  "
      "red: the paper's claim;  + = error higher without it",
      fill="dimgray",
      font=small,
  )
  bottom = top + row_h * max(len(rows), 1)
  for p, (key, title) in enumerate(panels):
    x0 = label_w + gap + p * (panel_w + gap)

    def x_of(value, x0=x0):
      return x0 + (value - lo) / (hi - lo) * panel_w

    draw.rectangle([x0, top, x0 + panel_w, bottom], outline="gray")
    draw.line([x_of(0), top, x_of(0), bottom], fill="gray")
    draw.text(
        (x0 + panel_w / 2 - 40, bottom + 34),
        f"{title} error, points",
        fill="black",
        font=small,
    )
    # Ticks.
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9) / 2))
    if (hi - lo) / step > 10:
      step *= 2 if (hi - lo) / step <= 20 else 5
    tick = math.ceil(lo / step) * step
    while tick <= hi:
      draw.line([x_of(tick), bottom, x_of(tick), bottom + 5], fill="black")
      draw.text(
          (x_of(tick) - 10, bottom + 10), f"{tick:g}", fill="black", font=small
      )
      tick += step
    for i, (variant, entry) in enumerate(rows):
      y = top + row_h * i + row_h / 2
      if p == 0:
        draw.text((gap, y - 8), variant, fill="black", font=font)
      d = entry["vs_paper"][key]
      if d["ci95"] is not None:
        a, b = (x_of(100 * x) for x in d["ci95"])
        draw.line([a, y, b, y], fill="royalblue", width=3)
        draw.line([a, y - 6, a, y + 6], fill="royalblue", width=2)
        draw.line([b, y - 6, b, y + 6], fill="royalblue", width=2)
      if d["mean"] is not None:
        m = x_of(100 * d["mean"])
        draw.ellipse([m - 5, y - 5, m + 5, y + 5], fill="royalblue")
      claim = CLAIMS.get(variant)
      value = None
      if claim is not None:
        value = claim.top1 if key.startswith("top1") else claim.top5
      if value is not None:
        c = x_of(value)
        draw.polygon(
            [(c, y - 8), (c + 6, y), (c, y + 8), (c - 6, y)],
            outline="red",
            fill=None,
        )
        if claim.relation == ">":
          draw.line([c + 6, y, c + 16, y], fill="red", width=2)
  image.save(path)
