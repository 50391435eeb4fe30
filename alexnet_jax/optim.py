"""The paper's optimizer (§5) and learning-rate schedules, built from optax.

The update rule of §5 is

    v <- 0.9 v - 0.0005 * eps * w - eps * grad
    w <- w + v

The velocity accumulates *learning-rate-scaled* steps, so when eps drops the
old velocity is not rescaled. optax's `sgd(momentum=...)` keeps a trace of raw
gradients and multiplies it by the current rate instead, which is a
different rule after every rate change (PAPER.md §2). Here the learning rate
is applied *before* the momentum trace:

    add_decayed_weights(wd)      g' = grad + wd * w
    scale_by_learning_rate(eps)  u  = -eps * g'
    trace(momentum)              v  = momentum * v + u ;  update = v

The learning rate is a hyperparameter in the optimizer state
(`optax.inject_hyperparams`), so it is checkpointed with the state and the
plateau schedule can change it between steps without recompiling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
import optax


def default_config() -> ml_collections.ConfigDict:
  """The paper's optimizer and schedule (§5)."""
  c = ml_collections.ConfigDict()
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.weight_decay = 5e-4
  # The authors' code decays weights only (PAPER.md §2); the paper's formula
  # is written for every w.
  c.decay_biases = False
  # "plateau": divide by `factor` when the validation error stops improving,
  # at most `max_drops` times (§5). "steps": divide by `factor` at each of
  # `boundary_epochs`, the common fixed alternative (e.g. every 30 epochs).
  c.schedule = "plateau"
  c.factor = 0.1
  c.max_drops = 3
  c.patience = 1  # Evaluations without improvement before a drop.
  c.min_improvement = 0.0  # An error must fall by more than this to count.
  c.boundary_epochs = (30, 60, 90)
  return c


def weight_decay_mask(params: Any, decay_biases: bool) -> Any:
  """True for the parameters weight decay applies to."""

  def is_decayed(path, _):
    name = getattr(path[-1], "key", None)
    return decay_biases or name != "bias"

  return jax.tree_util.tree_map_with_path(is_decayed, params)


def paper_sgd(learning_rate: float | optax.ScalarOrSchedule,
              momentum: float = 0.9, weight_decay: float = 5e-4,
              decay_biases: bool = False) -> optax.GradientTransformation:
  """The §5 update rule (see the module docstring) with `learning_rate`.

  The rate is an injected hyperparameter: read or change it with
  `get_learning_rate` / `set_learning_rate`.
  """

  def make(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(
            weight_decay,
            mask=lambda p: weight_decay_mask(p, decay_biases)),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=False),
    )

  return optax.inject_hyperparams(make)(
      learning_rate=learning_rate, momentum=momentum,
      weight_decay=weight_decay)


def step_schedule(base: float, boundaries: tuple[int, ...],
                  factor: float = 0.1) -> optax.Schedule:
  """base * factor^(number of boundaries passed); e.g. /10 every 30 epochs."""
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"optim.boundaries={boundaries} must be increasing.")
  return optax.piecewise_constant_schedule(
      base, {int(b): factor for b in boundaries})


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The optimizer for an `optim` config (see `default_config`).

  `steps_per_epoch` converts the "steps" schedule's epochs into steps.
  """
  if config.schedule == "plateau":
    lr = config.learning_rate  # Changed by PlateauSchedule between steps.
  elif config.schedule == "steps":
    boundaries = tuple(int(round(e * steps_per_epoch))
                       for e in config.boundary_epochs)
    lr = step_schedule(config.learning_rate, boundaries, config.factor)
  else:
    raise ValueError(
        f"optim.schedule={config.schedule!r}: use 'plateau' or 'steps'.")
  return paper_sgd(lr, config.momentum, config.weight_decay,
                   config.decay_biases)


def get_learning_rate(opt_state: Any) -> jax.Array:
  """The rate of the last update (or, before any, of the first)."""
  return opt_state.hyperparams["learning_rate"]


def set_learning_rate(opt_state: Any, value: float) -> Any:
  """Returns `opt_state` with a new learning rate (velocity untouched)."""
  hyperparams = dict(opt_state.hyperparams)
  old = hyperparams["learning_rate"]
  hyperparams["learning_rate"] = jax.numpy.asarray(value, old.dtype)
  if hasattr(old, "sharding"):
    hyperparams["learning_rate"] = jax.device_put(
        hyperparams["learning_rate"], old.sharding)
  return opt_state._replace(hyperparams=hyperparams)


@dataclasses.dataclass
class PlateauSchedule:
  """Divide the rate by 1/factor when validation error stops improving.

  §5: "The heuristic which we followed was to divide the learning rate by 10
  when the validation error rate stopped improving with the current learning
  rate. The learning rate was initialized at 0.01 and reduced three times
  prior to termination." After `max_drops` drops, the next plateau means
  `done`. Its state is plain numbers (`state_dict`), saved in checkpoints.
  """
  base_lr: float = 0.01
  factor: float = 0.1
  max_drops: int = 3
  patience: int = 1
  min_improvement: float = 0.0
  best_error: float = float("inf")
  bad_evals: int = 0
  drops: int = 0
  done: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> PlateauSchedule:
    return cls(base_lr=config.learning_rate, factor=config.factor,
               max_drops=config.max_drops, patience=config.patience,
               min_improvement=config.min_improvement)

  @property
  def learning_rate(self) -> float:
    return self.base_lr * self.factor ** self.drops

  def update(self, val_error: float) -> float:
    """Records a validation error; returns the learning rate to use next."""
    if not np.isfinite(val_error):
      raise ValueError(f"validation error {val_error} is not finite.")
    if val_error < self.best_error - self.min_improvement:
      self.best_error = float(val_error)
      self.bad_evals = 0
      return self.learning_rate
    self.bad_evals += 1
    if self.bad_evals >= self.patience:
      self.bad_evals = 0
      if self.drops >= self.max_drops:
        self.done = True
      else:
        self.drops += 1
    return self.learning_rate

  def state_dict(self) -> dict[str, Any]:
    return dict(best_error=self.best_error, bad_evals=self.bad_evals,
                drops=self.drops, done=self.done)

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.best_error = float(state["best_error"])
    self.bad_evals = int(state["bad_evals"])
    self.drops = int(state["drops"])
    self.done = bool(state["done"])

