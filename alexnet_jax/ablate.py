r"""Ablation study: `python -m alexnet_jax.ablate --config=... --variants=...`.

  python -m alexnet_jax.ablate --config=configs/demo.py \
      --variants=paper,one_gpu,no_lrn,no_overlap,no_pca,no_dropout \
      --seeds=3 --workdir=workdirs/ablate [--config.batch_size=...]

Every (variant, seed) is an ordinary training run (`train_and_evaluate`) in
its own workdir, `<workdir>/<variant>/seed<k>`: a rerun of the same command
skips the runs that wrote results.json and resumes the unfinished ones. A
variant is a config argument appended to the config file's own (`no_lrn`
with `configs/demo.py:smoke` trains `configs/demo.py:smoke,no_lrn`; `paper`
adds nothing; `no_lrn+no_pca` adds both); `--config.x=y` overrides apply to
every run. Seed k (0..n-1) is the same for every variant, so each variant
sees the same data order as `paper` and the comparison is paired.

At the end it writes `<workdir>/ablation.json`, `ablation.md` and
`ablation.png`: per variant the mean and spread over seeds of the top-1 and
top-5 errors (1 and 10 crops) on the config's test split (else its
evaluation split), the difference from `paper` with a 95% t-interval over
the paired seeds, and the difference the paper claims (§3.2-§4.2, §7) beside
it. The same command runs the full-scale study with
`--config=configs/ilsvrc2010.py` on accelerators.

All runs share one process (the fake CPU device count is the largest any
variant asks for) and a JAX compilation cache, so the seeds after the first
reuse its compiled programs. A line per run says which run of how many is
going and the ETA. Every variant's config and mesh are checked before the
first run: a mistake (an unknown variant, say) is one `error:` line with
exit status 2; a run that fails (a NaN loss) is reported, the others go on,
and the exit status is 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from scipy import stats

from alexnet_jax import cli
from alexnet_jax import config_validation

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/demo.py[:ARGS]; "
    "--config.x=y overrides apply to every run.", lock_config=True)
_VARIANTS = flags.DEFINE_list(
    "variants", "paper,one_gpu,no_lrn,no_overlap,no_pca,no_dropout",
    "Variants: `paper` (the config as given) or config arguments added to "
    "the config's own; `a+b` combines two.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..n-1 for every variant.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Holds one workdir per run and the ablation.* outputs "
    "(default: workdirs/ablate_<config name>).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "JAX persistent compilation cache, shared by "
    "the runs (seeds of a variant compile the same programs); default "
    "<workdir>/compilation_cache, '' for none.")
flags.mark_flags_as_required(["config"])

PAPER = "paper"
# (metric, crops) pairs read from results.json.
METRICS = (("top1_error", "center"), ("top1_error", "ten"),
           ("top5_error", "center"), ("top5_error", "ten"))


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
    cells = ["n/a" if v is None else f"{sign}+{v:g}"
             for v in (self.top1, self.top5)]
    return " / ".join(cells)


# The paper's claims, keyed by variant (the config argument that removes
# the component).
CLAIMS = {
    "one_gpu": Claim(
        "§3.2", 1.7, 1.2, "two towers beat the one-GPU net of footnote 2 "
        "(half the kernels) by 1.7 top-1 / 1.2 top-5"),
    "no_lrn": Claim("§3.3", 1.4, 1.2, "response normalization reduces "
                    "top-1 / top-5 error by 1.4 / 1.2"),
    "no_overlap": Claim("§3.4", 0.4, 0.3, "overlapping pooling (3/2 vs "
                        "2/2) reduces top-1 / top-5 error by 0.4 / 0.3"),
    "no_pca": Claim("§4.1", 1.0, None, "PCA lighting reduces top-1 error "
                    "by over 1", relation=">"),
    "no_dropout": Claim("§4.2", None, None, "without dropout the network "
                        "overfits substantially (no error number)"),
    "tanh": Claim("§3.1", None, None, "Figure 1: ReLUs reach 25% training "
                  "error on CIFAR-10 6x faster than tanh (no test error "
                  "difference claimed)"),
    "no_conv4": Claim("§7", 2.0, None, "removing any middle layer costs "
                      "about 2 top-1", relation="~"),
}


class AblationError(cli.UserError):
  """Bad input; the message says what to change (exit status 2)."""


# ---------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------


def variant_config_arg(base: str, variant: str) -> str:
  """`configs/demo.py:smoke` + `no_lrn+no_pca` -> `...:smoke,no_lrn,no_pca`."""
  path, _, arg = base.partition(":")
  args = [a for a in arg.split(",") if a]
  if variant != PAPER:
    args += [a for a in variant.split("+") if a]
  return path + (":" + ",".join(args) if args else "")


def load_config(config_arg: str) -> ml_collections.ConfigDict:
  """Loads `path[:args]` exactly as the --config flag of main.py does."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True)
  flag_values(["ablate", f"--config={config_arg}"])
  return flag_values.config


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> None:
  """Sets `{"a.b": value}` (the parsed --config.a.b=value flags)."""
  for path, value in overrides.items():
    *parents, name = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[name] = value


def known_variants(base: str) -> list[str]:
  """`paper` and the claims' variants that the config accepts."""
  accepted = []
  for name in CLAIMS:
    try:
      load_config(variant_config_arg(base, name))
    except Exception:  # pylint: disable=broad-except
      continue
    accepted.append(name)
  return [PAPER] + accepted


def variant_configs(base: str, variants: Sequence[str],
                    overrides: dict[str, Any]
                    ) -> dict[str, ml_collections.ConfigDict]:
  """Loads and checks every variant's config (before any training)."""
  configs, unknown = {}, []
  for variant in variants:
    try:
      config = load_config(variant_config_arg(base, variant))
    except (ValueError, KeyError, flags.Error) as e:
      # config_flags puts the config's traceback into its message: keep the
      # config's own last line (e.g. "ValueError: unknown config ...").
      cause = str(e).strip().splitlines()[-1]
      unknown.append((variant, re.sub(r"^[\w.]*(Error|Exception): ", "",
                                      cause)))
      continue
    apply_overrides(config, overrides)
    try:
      config_validation.validate(config)
    except config_validation.ConfigError as e:
      raise AblationError(f"variant {variant!r}: {e}") from None
    configs[variant] = config
  if unknown:
    lines = [f"unknown variant {v!r} for {base} ({e})" for v, e in unknown]
    lines.append("known variants: " + ", ".join(known_variants(base)) +
                 " (and `+`-joined combinations of them)")
    raise AblationError("; ".join(lines))
  return configs


def result_split(config: ml_collections.ConfigDict) -> str:
  """The split the study compares: the test split, else the eval split."""
  return config.get("test_split") or config.eval_split


# ---------------------------------------------------------------------------
# Statistics.
# ---------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, Any]:
  """Mean and sample standard deviation (None with fewer than 2 values)."""
  v = np.asarray(values, np.float64)
  return dict(n=len(v), values=[float(x) for x in v],
              mean=float(v.mean()) if len(v) else None,
              std=float(v.std(ddof=1)) if len(v) > 1 else None)


def paired_difference(variant: dict[int, float],
                      paper: dict[int, float]) -> dict[str, Any]:
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
  out = dict(n=len(d), seeds=seeds, differences=[float(x) for x in d],
             mean=float(d.mean()) if len(d) else None, std=None, ci95=None)
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


def analyze(runs: dict[str, dict[int, dict[str, Any]]], split: str,
            variants: Sequence[str]) -> dict[str, Any]:
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
          for seed, r in sorted(runs.get(variant, {}).items())}
    return out

  paper = values(PAPER)
  table = {}
  for variant in variants:
    v = values(variant)
    entry = dict(errors={k: summarize(list(s.values()))
                         for k, s in v.items()})
    if variant != PAPER:
      entry["vs_paper"] = {k: paired_difference(s, paper[k])
                           for k, s in v.items()}
      claim = CLAIMS.get(variant)
      entry["claim"] = (dataclasses.asdict(claim) | dict(
          formatted=claim.format())) if claim else None
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
      "|---|---|---|---|---|---|"]
  for variant, entry in table.items():
    e = entry["errors"]
    lines.append(
        f"| {variant} | {e['top1_error_center']['n']} | "
        + " | ".join(_mean_std(e[f"{m}_{c}"]) for m, c in METRICS) + " |")
  lines += [
      "",
      "Difference from `paper` (variant - paper, percentage points; + means "
      "the component helps), mean over paired seeds [95% t-interval]:",
      "",
      "| variant | paper's claim top-1 / top-5 | top-1 10-crop | "
      "top-5 10-crop | top-1 1-crop | top-5 1-crop | pairs | top-1 "
      "10-crop reads |",
      "|---|---|---|---|---|---|---|---|"]
  for variant, entry in table.items():
    if variant == PAPER:
      continue
    d = entry["vs_paper"]
    claim = entry["claim"]
    claim_cell = (f"{claim['formatted']} ({claim['section']})" if claim
                  else "none")
    lines.append(
        f"| {variant} | {claim_cell} | "
        + " | ".join(_diff(d[k]) for k in (
            "top1_error_ten", "top5_error_ten", "top1_error_center",
            "top5_error_center"))
        + f" | {d['top1_error_ten']['n']} | {reading(d['top1_error_ten'])} |")
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
      xs += [100 * x for x in ([d["mean"]] if d["mean"] is not None else [])
             + (d["ci95"] or [])]
    claim = CLAIMS.get(v)
    xs += [x for x in ((claim.top1, claim.top5) if claim else ())
           if x is not None]
  lo, hi = min(xs), max(xs)
  pad = max(0.5, 0.08 * (hi - lo))
  lo, hi = lo - pad, hi + pad
  label_w, panel_w, row_h, top, gap = 150, 380, 34, 70, 30
  width = label_w + 2 * panel_w + 3 * gap
  height = top + row_h * max(len(rows), 1) + 80
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  font, small = _font(15), _font(12)
  draw.text((gap, 10), f"Difference from paper, 10 crops, "
            f"{study['split']} ({study['config']}; {len(study['seeds'])} "
            "seeds)", fill="black", font=font)
  draw.text((gap, 32), "blue: mean and 95% interval over paired seeds;  "
            "red: the paper's claim;  + = error higher without it",
            fill="dimgray", font=small)
  bottom = top + row_h * max(len(rows), 1)
  for p, (key, title) in enumerate(panels):
    x0 = label_w + gap + p * (panel_w + gap)

    def x_of(value, x0=x0):
      return x0 + (value - lo) / (hi - lo) * panel_w

    draw.rectangle([x0, top, x0 + panel_w, bottom], outline="gray")
    draw.line([x_of(0), top, x_of(0), bottom], fill="gray")
    draw.text((x0 + panel_w / 2 - 40, bottom + 34),
              f"{title} error, points", fill="black", font=small)
    # Ticks.
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9) / 2))
    if (hi - lo) / step > 10:
      step *= 2 if (hi - lo) / step <= 20 else 5
    tick = math.ceil(lo / step) * step
    while tick <= hi:
      draw.line([x_of(tick), bottom, x_of(tick), bottom + 5], fill="black")
      draw.text((x_of(tick) - 10, bottom + 10), f"{tick:g}", fill="black",
                font=small)
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
        draw.polygon([(c, y - 8), (c + 6, y), (c, y + 8), (c - 6, y)],
                     outline="red", fill=None)
        if claim.relation == ">":
          draw.line([c + 6, y, c + 16, y], fill="red", width=2)
  image.save(path)


# ---------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def _config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir that already holds a run must hold this config's run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  if saved != _config_dict(config):
    changed = sorted(k for k in set(saved) | set(_config_dict(config))
                     if saved.get(k) != _config_dict(config).get(k))
    raise AblationError(
        f"{workdir} holds a run of another config (differs in {changed}): "
        "use another --workdir, or delete that run to redo it.")


def run_study(base: str, variants: Sequence[str], seeds: int, workdir: str,
              overrides: dict[str, Any] | None = None,
              compilation_cache: str | None = None) -> dict[str, Any]:
  """Runs (or skips, or resumes) every run; writes the three outputs.

  Args:
    base: the config file and its arguments, `path[:args]`.
    variants: `paper` and config arguments (`a+b` for several).
    seeds: seeds 0..seeds-1 for every variant.
    workdir: the study's directory.
    overrides: `{"a.b": value}` set in every run's config.
    compilation_cache: a JAX persistent compilation cache directory (None:
      none). Every seed of a variant compiles the same programs; on a CPU
      the cache makes the second seed's run several times faster.

  Returns:
    The study (what ablation.json holds) with "outputs" and "failed".
  """
  variants = list(dict.fromkeys(variants))
  if PAPER not in variants:
    variants.insert(0, PAPER)
  if seeds < 1:
    raise AblationError(f"--seeds={seeds} must be >= 1.")
  configs = variant_configs(base, variants, overrides or {})
  plan = []
  for seed in range(seeds):
    for variant in variants:
      config = configs[variant].copy_and_resolve_references()
      config.seed = seed
      config.lock()
      run_dir = os.path.join(workdir, variant, f"seed{seed}")
      check_workdir(config, run_dir)
      plan.append((variant, seed, config, run_dir))
  split = result_split(configs[PAPER])

  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  # Fake CPU devices for the most demanding variant, before JAX starts; a
  # mesh takes the devices it needs from the front of the list.
  cli.setup_devices(ml_collections.ConfigDict(dict(cpu_devices=max(
      c.get("cpu_devices", 0) for c in configs.values()))))
  import jax  # pylint: disable=g-import-not-at-top
  if compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  # Every variant's mesh must fit this host before the first run starts.
  for variant, config in configs.items():
    try:
      config_validation.validate_mesh(config, jax.devices())
    except config_validation.ConfigError as e:
      raise AblationError(f"variant {variant!r}: {e}") from None

  start = time.time()
  runs, records, failed, durations = {}, {}, [], []
  to_train = sum(not os.path.exists(os.path.join(d, "results.json"))
                 for *_, d in plan)
  trained = 0
  for i, (variant, seed, config, run_dir) in enumerate(plan, 1):
    head = f"[run {i}/{len(plan)}] {variant} seed {seed}"
    results_path = os.path.join(run_dir, "results.json")
    record = dict(workdir=run_dir, config=variant_config_arg(base, variant))
    if os.path.exists(results_path):
      print(f"{head}: skipped, finished before ({results_path})", flush=True)
      with open(results_path) as f:
        runs.setdefault(variant, {})[seed] = json.load(f)
      records.setdefault(variant, {})[seed] = record | dict(status="skipped")
      continue
    resuming = os.path.isdir(os.path.join(run_dir, "checkpoints"))
    eta = ("ETA " + _format_duration(np.mean(durations) * (to_train - trained))
           if durations else "ETA after the first run")
    print(f"{head} ({'resuming' if resuming else 'training'} in {run_dir}) "
          f"... {eta}", flush=True)
    run_start = time.time()
    try:
      results = train.train_and_evaluate(config, run_dir)
    except train.USER_ERRORS as e:
      logging.error("%s: %s", type(e).__name__, e)
      print(f"{head}: FAILED: {e}", flush=True)
      failed.append(f"{variant} seed {seed}: {e}")
      records.setdefault(variant, {})[seed] = record | dict(
          status="failed", error=str(e))
      trained += 1
      continue
    seconds = time.time() - run_start
    durations.append(seconds)
    trained += 1
    if results.get("preempted"):
      print(f"{head}: stopped by a signal at step {results['step']}; rerun "
            "the same command to resume.", flush=True)
      records.setdefault(variant, {})[seed] = record | dict(
          status="preempted")
      failed.append(f"{variant} seed {seed}: preempted")
      break
    runs.setdefault(variant, {})[seed] = results
    records.setdefault(variant, {})[seed] = record | dict(
        status="resumed" if resuming else "trained", seconds=seconds)
    e = results["evaluations"][split]["ten"]
    print(f"{head}: done in {_format_duration(seconds)}, {split} 10-crop "
          f"top-1 {100 * e['top1_error']:.2f}% top-5 "
          f"{100 * e['top5_error']:.2f}%", flush=True)

  table = analyze(runs, split, variants)
  for variant, entry in table.items():
    entry["config"] = variant_config_arg(base, variant)
    entry["runs"] = {str(s): r for s, r in sorted(
        records.get(variant, {}).items())}
  devices = jax.devices()
  study = dict(
      config=base, overrides={k: v for k, v in (overrides or {}).items()},
      variants_order=variants, seeds=list(range(seeds)), split=split,
      units="errors and differences are fractions (results.json units)",
      hardware=dict(platform=jax.default_backend(), count=len(devices),
                    kind=devices[0].device_kind),
      seconds=time.time() - start, failed=failed, variants=table)
  os.makedirs(workdir, exist_ok=True)
  outputs = {name: os.path.join(workdir, f"ablation.{name}")
             for name in ("json", "md", "png")}
  with open(outputs["json"], "w") as f:
    json.dump(study, f, indent=2, default=str)
  with open(outputs["md"], "w") as f:
    f.write(markdown(study))
  plot(study, outputs["png"])
  study["outputs"] = outputs
  return study


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  cli.config_value(_CONFIG)  # A config file that fails to load: one line.
  base = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  workdir = _WORKDIR.value
  if workdir is None:
    path, _, arg = base.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    workdir = os.path.join("workdirs", "ablate_" + name + (
        "_" + arg.replace(",", "_") if arg else ""))
  cache = _CACHE.value
  if cache is None:
    cache = os.path.join(workdir, "compilation_cache")
  study = run_study(base, _VARIANTS.value, _SEEDS.value, workdir, overrides,
                    cache)
  print(markdown(study), flush=True)
  for path in study["outputs"].values():
    print(f"wrote {path}")
  print(f"{len(study['failed'])} run(s) failed or stopped" if study["failed"]
        else f"all runs finished; {_format_duration(study['seconds'])} in "
        "this invocation", flush=True)
  for line in study["failed"]:
    print(f"  {line}", flush=True)
  return 1 if study["failed"] else 0


if __name__ == "__main__":
  cli.run(main)
