"""The paper's optimizer (§5) and learning-rate schedules, built from optax.

The update rule of §5 is

    v <- 0.9 v - 0.0005 * eps * w - eps * grad
    w <- w + v

The velocity accumulates *learning-rate-scaled* steps, so when eps drops the
old velocity is not rescaled. optax's `sgd(momentum=...)` keeps a trace of raw
gradients and multiplies it by the current rate instead, which is a
different rule after every rate change (docs/paper.md "Momentum after a rate
drop"). Here the learning rate is applied
*before* the momentum trace:

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
  # The authors' code decays weights only; the paper's formula (§5) is
  # written for every w.
  c.decay_biases = False
  # "plateau": divide by `factor` when the validation error stops improving,
  # `max_drops` times, then stop at the next plateau (§5; the rule is
  # PlateauSchedule's). "steps": divide by `factor` at each of
  # `boundary_epochs`, the common fixed alternative (e.g. every 30 epochs).
  c.schedule = "plateau"
  c.factor = 0.1
  c.max_drops = 3
  # A plateau: after at least `min_epochs_per_rate` epochs at this rate, the
  # mean validation error of the last `patience_epochs` epochs is not
  # `min_improvement` below the mean of the `patience_epochs` before them.
  # Chosen on simulated noisy AlexNet curves (configs/ilsvrc2010.py and
  # tests/test_optim.py): drops at epochs 31-45, 46-60, 61-75, stop 76-92.
  c.patience_epochs = 5
  c.min_improvement = 0.004  # Top-1 error, a fraction: 0.4%.
  c.min_epochs_per_rate = 15
  c.boundary_epochs = (30, 60, 90)
  return c


def weight_decay_mask(params: Any, decay_biases: bool) -> Any:
  """True for the parameters weight decay applies to."""

  def is_decayed(path, _):
    name = getattr(path[-1], "key", None)
    return decay_biases or name != "bias"

  return jax.tree_util.tree_map_with_path(is_decayed, params)


def paper_sgd(
    learning_rate: float | optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    decay_biases: bool = False,
) -> optax.GradientTransformation:
  """The §5 update rule (see the module docstring) with `learning_rate`.

  The rate is an injected hyperparameter: read or change it with
  `get_learning_rate` / `set_learning_rate`.
  """

  def make(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(
            weight_decay, mask=lambda p: weight_decay_mask(p, decay_biases)
        ),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=False),
    )

  return optax.inject_hyperparams(make)(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
  )


def step_schedule(
    base: float, boundaries: tuple[int, ...], factor: float = 0.1
) -> optax.Schedule:
  """base * factor^(number of boundaries passed); e.g. /10 every 30 epochs."""
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"optim.boundaries={boundaries} must be increasing.")
  return optax.piecewise_constant_schedule(
      base, {int(b): factor for b in boundaries}
  )


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int = 1
) -> optax.GradientTransformation:
  """The optimizer for an `optim` config (see `default_config`).

  `steps_per_epoch` converts the "steps" schedule's epochs into steps.
  """
  if config.schedule == "plateau":
    lr = config.learning_rate  # Changed by PlateauSchedule between steps.
  elif config.schedule == "steps":
    boundaries = tuple(
        int(round(e * steps_per_epoch)) for e in config.boundary_epochs
    )
    lr = step_schedule(config.learning_rate, boundaries, config.factor)
  else:
    raise ValueError(
        f"optim.schedule={config.schedule!r}: use 'plateau' or 'steps'."
    )
  return paper_sgd(
      lr, config.momentum, config.weight_decay, config.decay_biases
  )


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
        hyperparams["learning_rate"], old.sharding
    )
  return opt_state._replace(hyperparams=hyperparams)


@dataclasses.dataclass
class PlateauSchedule:
  """Divides the rate by 1/factor when validation error stops improving.

  §5: "The heuristic which we followed was to divide the learning rate by 10
  when the validation error rate stopped improving with the current learning
  rate. The learning rate was initialized at 0.01 and reduced three times
  prior to termination."

  The rule, robust to epoch-to-epoch noise in the validation error: at an
  evaluation at epoch t, the error has stopped improving when at least
  `min_epochs_per_rate` epochs were trained at the current rate and the mean
  error of the evaluations in (t - p, t] is not `min_improvement` below the
  mean of those in (t - 2p, t - p], p = `patience_epochs`. Then the rate is
  divided by 1/factor, or, after `max_drops` drops, training stops (`done`).
  A run's `num_epochs` still bounds it.

  Its state is plain numbers and lists (`state_dict`), saved in checkpoints.
  `drops` records each drop: epoch, step, the validation error of the
  evaluation that caused it, the two window means and the new rate.
  """

  base_lr: float = 0.01
  factor: float = 0.1
  max_drops: int = 3
  patience_epochs: float = 5
  min_improvement: float = 0.004
  min_epochs_per_rate: float = 15
  # Where the current rate started (None: at the next evaluation).
  rate_start_epoch: float | None = 0.0
  # (epoch, validation error) of the evaluations at the current rate.
  history: list[tuple[float, float]] = dataclasses.field(default_factory=list)
  drops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  # The evaluation that ended the run (None while it goes on).
  stop: dict[str, Any] | None = None

  def __post_init__(self):
    if self.patience_epochs <= 0 or self.min_epochs_per_rate < 0:
      raise ValueError(
          f"optim.patience_epochs={self.patience_epochs} must be > 0 and "
          f"optim.min_epochs_per_rate={self.min_epochs_per_rate} >= 0."
      )

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> PlateauSchedule:
    return cls(
        base_lr=config.learning_rate,
        factor=config.factor,
        max_drops=config.max_drops,
        patience_epochs=config.patience_epochs,
        min_improvement=config.min_improvement,
        min_epochs_per_rate=config.min_epochs_per_rate,
    )

  @property
  def learning_rate(self) -> float:
    return self.base_lr * self.factor ** len(self.drops)

  @property
  def done(self) -> bool:
    return self.stop is not None

  def window_means(self, epoch: float) -> tuple[float, float] | None:
    """Mean error in (epoch - p, epoch] and in the p epochs before.

    None while the current rate lacks evaluations in either window.
    """
    p, eps = self.patience_epochs, 1e-6
    last = [e for t, e in self.history if t > epoch - p + eps]
    before = [
        e for t, e in self.history if epoch - 2 * p + eps < t <= epoch - p + eps
    ]
    if not last or not before:
      return None
    return float(np.mean(last)), float(np.mean(before))

  def update(
      self, val_error: float, epoch: float, step: int | None = None
  ) -> float:
    """Records a validation error; returns the learning rate to use next."""
    if not np.isfinite(val_error):
      raise ValueError(f"validation error {val_error} is not finite.")
    if self.done:
      return self.learning_rate
    epoch, val_error = float(epoch), float(val_error)
    if self.rate_start_epoch is None:
      self.rate_start_epoch = epoch
    self.history.append((epoch, val_error))
    means = self.window_means(epoch)
    if (
        epoch - self.rate_start_epoch < self.min_epochs_per_rate - 1e-6
        or means is None
        or means[0] < means[1] - self.min_improvement
    ):
      return self.learning_rate
    event = dict(
        epoch=epoch,
        step=step,
        val_error=val_error,
        mean_error=means[0],
        previous_mean_error=means[1],
    )
    if len(self.drops) >= self.max_drops:
      self.stop = event
    else:
      self.drops.append(
          dict(
              event,
              new_learning_rate=self.base_lr
              * self.factor ** (len(self.drops) + 1),
          )
      )
      self.rate_start_epoch = epoch
      self.history = []
    return self.learning_rate

  def state_dict(self) -> dict[str, Any]:
    return dict(
        rate_start_epoch=self.rate_start_epoch,
        history=[list(h) for h in self.history],
        drops=[dict(d) for d in self.drops],
        stop=None if self.stop is None else dict(self.stop),
    )

  def load_state_dict(self, state: dict[str, Any]) -> None:
    if isinstance(state.get("drops"), int):
      # A checkpoint of the earlier rule (best error, bad evaluations, a
      # drop count): its drops' epochs are unknown, and the current rate
      # counts as starting at the next evaluation.
      unknown = dict(epoch=None, step=None, val_error=None)
      self.drops = [
          dict(unknown, new_learning_rate=self.base_lr * self.factor ** (i + 1))
          for i in range(state["drops"])
      ]
      self.stop = unknown if state.get("done") else None
      self.rate_start_epoch, self.history = None, []
      return
    start = state["rate_start_epoch"]
    self.rate_start_epoch = None if start is None else float(start)
    self.history = [(float(t), float(e)) for t, e in state["history"]]
    self.drops = [dict(d) for d in state["drops"]]
    self.stop = None if state["stop"] is None else dict(state["stop"])
