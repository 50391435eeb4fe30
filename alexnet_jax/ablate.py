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
it (ablation_report.py computes and draws them). The same command runs the
full-scale study with `--config=configs/ilsvrc2010.py` on accelerators.

All runs share one process (the fake CPU device count is the largest any
variant asks for) and a JAX compilation cache, so the seeds after the first
reuse its compiled programs. A line per run says which run of how many is
going and the ETA. Every variant's config and mesh are checked before the
first run: a mistake (an unknown variant, say) is one `error:` line with
exit status 2; a run that fails (a NaN loss) is reported, the others go on,
and the exit status is 1.
"""

from __future__ import annotations

import json
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

from alexnet_jax import ablation_report
from alexnet_jax import cli
from alexnet_jax import config_validation

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file, e.g. configs/demo.py[:ARGS]; "
    "--config.x=y overrides apply to every run.",
    lock_config=True,
)
_VARIANTS = flags.DEFINE_list(
    "variants",
    "paper,one_gpu,no_lrn,no_overlap,no_pca,no_dropout",
    "Variants: `paper` (the config as given) or config arguments added to "
    "the config's own; `a+b` combines two.",
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..n-1 for every variant.")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Holds one workdir per run and the ablation.* outputs "
    "(default: workdirs/ablate_<config name>).",
)
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    None,
    "JAX persistent compilation cache, shared by "
    "the runs (seeds of a variant compile the same programs); default "
    "<workdir>/compilation_cache, '' for none.",
)
flags.mark_flags_as_required(["config"])


class AblationError(cli.UserError):
  """Bad input; the message says what to change (exit status 2)."""


# ---------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------


def variant_config_arg(base: str, variant: str) -> str:
  """`configs/demo.py:smoke` + `no_lrn+no_pca` -> `...:smoke,no_lrn,no_pca`."""
  path, _, arg = base.partition(":")
  args = [a for a in arg.split(",") if a]
  if variant != ablation_report.PAPER:
    args += [a for a in variant.split("+") if a]
  return path + (":" + ",".join(args) if args else "")


def load_config(config_arg: str) -> ml_collections.ConfigDict:
  """Loads `path[:args]` exactly as the --config flag of main.py does."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "", flag_values=flag_values, lock_config=True
  )
  flag_values(["ablate", f"--config={config_arg}"])
  return flag_values.config


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> None:
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
  for name in ablation_report.CLAIMS:
    try:
      load_config(variant_config_arg(base, name))
    except Exception:  # pylint: disable=broad-except
      continue
    accepted.append(name)
  return [ablation_report.PAPER] + accepted


def variant_configs(
    base: str, variants: Sequence[str], overrides: dict[str, Any]
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
      unknown.append(
          (variant, re.sub(r"^[\w.]*(Error|Exception): ", "", cause))
      )
      continue
    apply_overrides(config, overrides)
    try:
      config_validation.validate(config)
    except config_validation.ConfigError as e:
      raise AblationError(f"variant {variant!r}: {e}") from None
    configs[variant] = config
  if unknown:
    lines = [f"unknown variant {v!r} for {base} ({e})" for v, e in unknown]
    lines.append(
        "known variants: "
        + ", ".join(known_variants(base))
        + " (and `+`-joined combinations of them)"
    )
    raise AblationError("; ".join(lines))
  return configs


def result_split(config: ml_collections.ConfigDict) -> str:
  """The split the study compares: the test split, else the eval split."""
  return config.get("test_split") or config.eval_split


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
    changed = sorted(
        k
        for k in set(saved) | set(_config_dict(config))
        if saved.get(k) != _config_dict(config).get(k)
    )
    raise AblationError(
        f"{workdir} holds a run of another config (differs in {changed}): "
        "use another --workdir, or delete that run to redo it."
    )


def run_study(
    base: str,
    variants: Sequence[str],
    seeds: int,
    workdir: str,
    overrides: dict[str, Any] | None = None,
    compilation_cache: str | None = None,
) -> dict[str, Any]:
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
  if ablation_report.PAPER not in variants:
    variants.insert(0, ablation_report.PAPER)
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
  split = result_split(configs[ablation_report.PAPER])

  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  # Fake CPU devices for the most demanding variant, before JAX starts; a
  # mesh takes the devices it needs from the front of the list.
  cli.setup_devices(
      ml_collections.ConfigDict(
          dict(
              cpu_devices=max(c.get("cpu_devices", 0) for c in configs.values())
          )
      )
  )
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
  to_train = sum(
      not os.path.exists(os.path.join(d, "results.json")) for *_, d in plan
  )
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
    eta = (
        "ETA " + _format_duration(np.mean(durations) * (to_train - trained))
        if durations
        else "ETA after the first run"
    )
    print(
        f"{head} ({'resuming' if resuming else 'training'} in {run_dir}) "
        f"... {eta}",
        flush=True,
    )
    run_start = time.time()
    try:
      results = train.train_and_evaluate(config, run_dir)
    except train.USER_ERRORS as e:
      logging.error("%s: %s", type(e).__name__, e)
      print(f"{head}: FAILED: {e}", flush=True)
      failed.append(f"{variant} seed {seed}: {e}")
      records.setdefault(variant, {})[seed] = record | dict(
          status="failed", error=str(e)
      )
      trained += 1
      continue
    seconds = time.time() - run_start
    durations.append(seconds)
    trained += 1
    if results.get("preempted"):
      print(
          f"{head}: stopped by a signal at step {results['step']}; rerun "
          "the same command to resume.",
          flush=True,
      )
      records.setdefault(variant, {})[seed] = record | dict(status="preempted")
      failed.append(f"{variant} seed {seed}: preempted")
      break
    runs.setdefault(variant, {})[seed] = results
    records.setdefault(variant, {})[seed] = record | dict(
        status="resumed" if resuming else "trained", seconds=seconds
    )
    e = results["evaluations"][split]["ten"]
    print(
        f"{head}: done in {_format_duration(seconds)}, {split} 10-crop "
        f"top-1 {100 * e['top1_error']:.2f}% top-5 "
        f"{100 * e['top5_error']:.2f}%",
        flush=True,
    )

  table = ablation_report.analyze(runs, split, variants)
  for variant, entry in table.items():
    entry["config"] = variant_config_arg(base, variant)
    entry["runs"] = {
        str(s): r for s, r in sorted(records.get(variant, {}).items())
    }
  devices = jax.devices()
  study = dict(
      config=base,
      overrides={k: v for k, v in (overrides or {}).items()},
      variants_order=variants,
      seeds=list(range(seeds)),
      split=split,
      units="errors and differences are fractions (results.json units)",
      hardware=dict(
          platform=jax.default_backend(),
          count=len(devices),
          kind=devices[0].device_kind,
      ),
      seconds=time.time() - start,
      failed=failed,
      variants=table,
  )
  os.makedirs(workdir, exist_ok=True)
  outputs = {
      name: os.path.join(workdir, f"ablation.{name}")
      for name in ("json", "md", "png")
  }
  with open(outputs["json"], "w") as f:
    json.dump(study, f, indent=2, default=str)
  with open(outputs["md"], "w") as f:
    f.write(ablation_report.markdown(study))
  ablation_report.plot(study, outputs["png"])
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
    workdir = os.path.join(
        "workdirs",
        "ablate_" + name + ("_" + arg.replace(",", "_") if arg else ""),
    )
  cache = _CACHE.value
  if cache is None:
    cache = os.path.join(workdir, "compilation_cache")
  study = run_study(
      base, _VARIANTS.value, _SEEDS.value, workdir, overrides, cache
  )
  print(ablation_report.markdown(study), flush=True)
  for path in study["outputs"].values():
    print(f"wrote {path}")
  print(
      f"{len(study['failed'])} run(s) failed or stopped"
      if study["failed"]
      else f"all runs finished; {_format_duration(study['seconds'])} in "
      "this invocation",
      flush=True,
  )
  for line in study["failed"]:
    print(f"  {line}", flush=True)
  return 1 if study["failed"] else 0


if __name__ == "__main__":
  cli.run(main)
