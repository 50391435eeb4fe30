"""The evaluation library: top-1/top-5 error with 1 or 10 crops, single
models and ensembles (§4.1, §6), and reading a training workdir.

`evaluate(members, mesh, batches)` runs one pass over a split and averages
the softmax over the members (one member = one model; several = the paper's
averaged CNNs) and over the crops. Every example counts exactly once.
`load_workdir_config` and `restore_params` read what a training run left
in its workdir. The training program evaluates with it every epoch; the
command line is `python -m alexnet_jax.evaluate` (evaluate.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from alexnet_jax import checkpoint
from alexnet_jax import cli
from alexnet_jax import steps

CROPS = ("center", "ten")


class NotAWorkdirError(cli.UserError, FileNotFoundError):
  """A directory that holds no training run (config or checkpoint)."""


def check_ensemble(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Members must read the same images: same crop size, classes and mean
  image (the data are prepared with the first member's config)."""
  first = configs[0].model
  for c in configs[1:]:
    if c.get("mean_image_file") != configs[0].get("mean_image_file"):
      raise cli.UserError(
          "ensemble members subtract different mean images "
          f"(config.mean_image_file {configs[0].get('mean_image_file')!r} "
          f"vs {c.get('mean_image_file')!r}); evaluate them separately."
      )
    if (c.model.image_size, c.model.num_classes) != (
        first.image_size,
        first.num_classes,
    ):
      raise cli.UserError(
          "ensemble members differ in model.image_size or "
          f"model.num_classes: {(first.image_size, first.num_classes)} vs "
          f"{(c.model.image_size, c.model.num_classes)}."
      )


@functools.lru_cache(maxsize=32)
def _predict(
    model_config: ml_collections.FrozenConfigDict, mesh: Mesh
) -> Callable[[Any, jax.Array], jax.Array]:
  """One jitted predict per (model config, mesh), kept for the process.

  The training program evaluates every epoch: with the same function each
  time, XLA compiles it once per input shape instead of once per call.
  """
  return steps.make_predict(ml_collections.ConfigDict(model_config), mesh)


@jax.jit
def _ensemble_error_sums(
    log_probs: Sequence[jax.Array], labels: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
  """Error sums of the members' softmax average, taken in log space."""
  mean = jax.nn.logsumexp(jnp.stack(log_probs), axis=0) - jnp.log(
      len(log_probs)
  )
  return steps.error_sums(mean, labels, mask)


def evaluate(
    members: Sequence[tuple[ml_collections.ConfigDict, Any]],
    mesh: Mesh,
    batches: Any,
) -> dict[str, float]:
  """Top-1/top-5 error and loss over `batches`, averaging members' softmax.

  Args:
    members: (config, params) pairs; params placed for `mesh`.
    mesh: the device mesh.
    batches: iterable of global batches with `image` ([B, S, S, 3] or
      [B, crops, S, S, 3]), `label` and `mask`.

  Returns:
    {"top1_error", "top5_error", "loss", "count", "seconds"}; errors are
    fractions of the real (unmasked) examples, ties counted as errors
    (`steps.topk_errors`).
  """
  check_ensemble([c for c, _ in members])
  predicts = [
      _predict(ml_collections.FrozenConfigDict(c.model), mesh)
      for c, _ in members
  ]
  totals = None
  start = time.time()
  for batch in batches:
    log_probs = [
        p(params, batch["image"]) for p, (_, params) in zip(predicts, members)
    ]
    sums = _ensemble_error_sums(log_probs, batch["label"], batch["mask"])
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("evaluation saw no batches.")
  totals = jax.device_get(totals)  # The only host sync of the pass.
  count = float(totals["count"])
  return dict(
      top1_error=float(totals["top1_error"]) / count,
      top5_error=float(totals["top5_error"]) / count,
      loss=float(totals["loss"]) / count,
      count=int(count),
      seconds=time.time() - start,
  )


def format_table(
    results: dict[str, dict[str, dict[str, float]]],
    extra_rows: Sequence[tuple[str, str]] = (),
) -> str:
  """A small text table: split x crops -> top-1 / top-5 error."""
  lines = [
      f"{'split':<12} {'crops':<7} {'top-1 err':>9} {'top-5 err':>9} "
      f"{'images':>7}"
  ]
  for split, by_crops in results.items():
    for crops, r in by_crops.items():
      lines.append(
          f"{split:<12} {crops:<7} {100 * r['top1_error']:>8.2f}% "
          f"{100 * r['top5_error']:>8.2f}% {r['count']:>7d}"
      )
  for name, value in extra_rows:
    lines.append(f"{name}: {value}")
  return "\n".join(lines)


def restore_params(
    workdir: str, config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[Any, int]:
  """The latest checkpoint's parameters in `workdir`, laid out for `mesh`.

  The mesh may differ from the training mesh (e.g. trained on 2 devices,
  evaluated on 1).
  """
  abstract, shardings = steps.abstract_train_state(config, mesh)
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise NotAWorkdirError(f"no checkpoint in {ckpt.directory}.")
    state, _ = ckpt.restore_or(abstract, shardings, step=step)
  finally:
    ckpt.close()
  return state.params, step


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (written at the start of a run)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise NotAWorkdirError(
        f"{path} not found: {workdir} is not a training workdir (it is "
        "written when `python -m alexnet_jax.main` starts). Give the "
        "--workdir of a training run."
    )
  with open(path) as f:
    # JSON turns the config's tuples into lists; turn them back (the model
    # needs hashable fields).
    return ml_collections.ConfigDict(
        json.load(
            f,
            object_hook=lambda d: {
                k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
            },
        )
    )
