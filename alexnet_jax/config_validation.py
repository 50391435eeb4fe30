"""Checks a training config once, at start-up, before any data or device work.

`validate(config, num_devices)` raises `ConfigError` naming the first field
that is not allowed, its value, what is allowed and what to do. The training
program (main.py) and the evaluation program call it before they read data
or create arrays; a mistake then costs a second, not an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
import os
from typing import Any

import ml_collections

from alexnet_jax import cli
from alexnet_jax import model as model_lib
from alexnet_jax import parallel

CROPS = ("center", "ten")
SCHEDULES = ("plateau", "steps")
LIGHTING_SCALES = ("std", "unit_variance")


class ConfigError(cli.UserError, ValueError):
  """A config field holds a value that is not allowed."""


def _field(name: str, value: Any, allowed: str, todo: str = "") -> ConfigError:
  todo = todo or f"set --config.{name}=..."
  return ConfigError(
      f"config field {name}={value!r} is not allowed: "
      f"{allowed}. To fix: {todo}."
  )


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (
      isinstance(value, (int, float))
      and not isinstance(value, bool)
      and math.isfinite(value)
  )


def _check(
    config: ml_collections.ConfigDict,
    name: str,
    ok: Callable[[Any], bool],
    allowed: str,
    todo: str = "",
) -> None:
  """Raises ConfigError unless `ok(config.<name>)`; absent fields pass."""
  holder = config
  *parents, leaf = name.split(".")
  for parent in parents:
    holder = holder.get(parent)
    if holder is None:
      return
  if leaf not in holder:
    return
  value = holder[leaf]
  if not ok(value):
    raise _field(name, value, allowed, todo)


def _positive_int(config, name: str, todo: str = "") -> None:
  _check(
      config, name, lambda v: _is_int(v) and v >= 1, "a whole number >= 1", todo
  )


def _check_epochs(config, name: str, values: Sequence[Any]) -> None:
  if any(not _is_number(v) or v <= 0 for v in values):
    raise _field(name, tuple(values), "epochs > 0")
  if list(values) != sorted(set(values)):
    raise _field(
        name,
        tuple(values),
        "increasing and distinct epochs "
        "(each is one division of the learning rate)",
    )


def validate_training(config: ml_collections.ConfigDict) -> None:
  """Fields of the training loop, data and optimizer (no devices needed)."""
  for name in (
      "batch_size",
      "eval_batch_size",
      "num_epochs",
      "log_every_steps",
      "checkpoint_every_steps",
      "keep_checkpoints",
  ):
    _positive_int(config, name)
  _positive_int(
      config,
      "eval_every_epochs",
      "set --config.eval_every_epochs to how often (in epochs) to validate; "
      "to skip validation set --config.eval_split='' (with the 'steps' "
      "schedule)",
  )
  _check(
      config,
      "final_eval_crops",
      lambda v: not isinstance(v, str) and set(v) <= set(CROPS),
      f"a tuple of crops out of {CROPS}",
  )
  _check(
      config,
      "pca_lighting_std",
      lambda v: _is_number(v) and v >= 0,
      "a number >= 0 (0 turns PCA lighting off)",
  )
  _check(
      config,
      "pca_lighting_scale",
      lambda v: v in LIGHTING_SCALES,
      f"one of {LIGHTING_SCALES}",
  )
  _check(
      config,
      "shuffle_buffer_size",
      lambda v: _is_int(v) and v >= 1,
      "a whole number >= 1",
  )
  _check(
      config,
      "cpu_devices",
      lambda v: _is_int(v) and v >= 0,
      "a whole number >= 0 (0: leave the devices as they are)",
  )
  _check(
      config, "data_dir", lambda v: isinstance(v, str) and v, "a directory path"
  )
  _check(
      config, "dataset", lambda v: isinstance(v, str) and v, "a data set name"
  )
  validate_mean_image_file(config)

  optim = config.get("optim")
  if optim is None:
    return
  _check(
      config,
      "optim.learning_rate",
      lambda v: _is_number(v) and v > 0,
      "a number > 0",
  )
  _check(
      config,
      "optim.momentum",
      lambda v: _is_number(v) and 0 <= v < 1,
      "a number in [0, 1)",
  )
  _check(
      config,
      "optim.weight_decay",
      lambda v: _is_number(v) and v >= 0,
      "a number >= 0",
  )
  _check(
      config,
      "optim.factor",
      lambda v: _is_number(v) and 0 < v < 1,
      "a number in (0, 1): the rate is multiplied by it at each drop",
  )
  _check(
      config, "optim.schedule", lambda v: v in SCHEDULES, f"one of {SCHEDULES}"
  )
  _check(
      config,
      "optim.max_drops",
      lambda v: _is_int(v) and v >= 0,
      "a whole number >= 0",
  )
  for name in ("patience_epochs", "min_epochs_per_rate"):
    _check(
        config,
        f"optim.{name}",
        lambda v: _is_int(v) and v >= 1,
        "a whole number of epochs >= 1",
    )
  _check(
      config,
      "optim.min_improvement",
      lambda v: _is_number(v) and v >= 0,
      "an error fraction >= 0",
  )
  if optim.get("schedule") == "steps":
    _check_epochs(config, "optim.boundary_epochs", optim.boundary_epochs)
  if optim.get("schedule") == "plateau" and not config.get("eval_split"):
    raise _field(
        "eval_split",
        config.get("eval_split"),
        "the 'plateau' schedule lowers the rate when the validation error "
        "stops improving, so it needs a split to validate on",
        "set --config.eval_split=validation, or use a fixed schedule: "
        "--config.optim.schedule=steps",
    )


def validate_mean_image_file(config: ml_collections.ConfigDict) -> None:
  """`mean_image_file`: empty, or a file that exists (its shape is checked
  against the data when they are read: input_stats.load_mean_image)."""
  _check(
      config,
      "mean_image_file",
      lambda v: v is None or isinstance(v, str),
      "a path to an .npz holding mean_image, or empty",
  )
  path = config.get("mean_image_file")
  if path and not os.path.isfile(path):
    raise _field(
        "mean_image_file",
        path,
        "no such file",
        "make it from Caffe's mean with `python -m alexnet_jax.weights "
        "convert --caffemodel=... --out=... --mean=imagenet_mean.binaryproto "
        "--mean_out=FILE`, give its path, or set --config.mean_image_file= "
        "(empty) to use the mean of the training images",
    )


def validate_model(config: ml_collections.ConfigDict) -> None:
  """The model section (model.build checks names, widths, sizes, rates)."""
  model = config.model
  _check(
      config,
      "model.num_classes",
      lambda v: _is_int(v) and v >= 2,
      "a whole number >= 2",
  )
  try:
    model_lib.build(model)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config section model: {e}") from None


def validate_mesh(
    config: ml_collections.ConfigDict, devices: Sequence[Any]
) -> None:
  """mesh.data x mesh.model must be possible with `devices`."""
  mesh = config.get("mesh")
  if mesh is None:
    return
  for axis in ("data", "model"):
    _check(config, f"mesh.{axis}", _is_int, "a whole number")
  try:
    made = parallel.make_mesh(
        mesh.data,
        mesh.model,
        num_towers=config.model.num_towers,
        devices=devices,
    )
    for name in ("batch_size", "eval_batch_size"):
      if name in config:
        parallel.check_batch_size(config[name], made)
  except parallel.MeshError as e:
    hint = ""
    if all(d.platform == "cpu" for d in devices) and mesh.model > 1:
      hint = (
          f" To fix on a CPU-only host: --config.cpu_devices="
          f"{max(mesh.model, mesh.data * mesh.model)} makes that many "
          "fake CPU devices, or --config.mesh.model=1 runs both towers "
          "on each device."
      )
    raise ConfigError(f"{e}{hint}") from None


def validate(
    config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
) -> None:
  """All checks; the mesh too when `devices` (e.g. jax.devices()) is given."""
  validate_training(config)
  validate_model(config)
  if devices is not None:
    validate_mesh(config, devices)
