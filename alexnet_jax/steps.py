"""Train and eval steps: softmax cross-entropy, top-1 and top-5 error.

`make_train_step` / `make_predict` return jitted functions over global
arrays: the batch is sharded over the mesh's `data` axis, the parameters and
optimizer state over `model` (parallel.py). The model itself runs inside
`shard_map`; the loss and metrics are ordinary jit code on the global batch.

Metrics are returned as device arrays: the caller decides when to fetch
them (on logging steps only), so a step never blocks the host.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import optax

from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel

Array = jax.Array
Batch = dict[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The dropout key of step s is
  fold_in(rng, s), so a run resumed at step s draws the same masks."""

  step: Array
  params: Any
  opt_state: Any
  rng: Array


def state_shardings(
    tx: optax.GradientTransformation, mesh: Mesh, abstract_state: TrainState
) -> TrainState:
  """Shardings of a TrainState: every params-shaped tree like the params."""
  param_shardings = parallel.named_shardings(
      mesh, parallel.param_specs(abstract_state.params)
  )
  replicated = NamedSharding(mesh, P())
  opt_shardings = optax.tree_map_params(
      tx,
      lambda _, sharding: sharding,
      abstract_state.opt_state,
      param_shardings,
      transform_non_params=lambda _: replicated,
  )
  return TrainState(
      step=replicated,
      params=param_shardings,
      opt_state=opt_shardings,
      rng=replicated,
  )


def _initial_state(
    tx: optax.GradientTransformation, params: Any, rng: Array
) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=rng,
  )


def abstract_train_state(
    config: ml_collections.ConfigDict, mesh: Mesh, steps_per_epoch: int = 1
) -> tuple[TrainState, TrainState]:
  """(shapes of the TrainState, its shardings); nothing is computed.

  The shapes are what a checkpoint restores into (on any mesh).
  """
  tx = optim.make_optimizer(config.optim, steps_per_epoch)
  abstract = jax.eval_shape(
      functools.partial(_initial_state, tx),
      model_lib.param_shapes(config.model),
      jax.random.key(0),
  )
  return abstract, state_shardings(tx, mesh, abstract)


def create_train_state(
    config: ml_collections.ConfigDict,
    rng: Array,
    mesh: Mesh,
    steps_per_epoch: int = 1,
) -> tuple[TrainState, TrainState]:
  """Initial TrainState, created directly with its shardings.

  `config` has `model` and `optim` sections. Returns (state, shardings).
  """
  params_rng, dropout_rng = jax.random.split(rng)
  tx = optim.make_optimizer(config.optim, steps_per_epoch)
  params = model_lib.init_params(config.model, params_rng, mesh)
  _, shardings = abstract_train_state(config, mesh, steps_per_epoch)
  state = jax.jit(
      functools.partial(_initial_state, tx), out_shardings=shardings
  )(params, dropout_rng)
  return state, shardings


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-example softmax cross-entropy, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )


def topk_errors(scores: Array, labels: Array) -> tuple[Array, Array]:
  """Per-example top-1 and top-5 errors (1.0 = wrong) of scores [B, K].

  The true class's rank is the number of *other* classes scored at least as
  high, so a tie counts against the prediction: a constant output is a top-1
  error, and a true class tied with hundreds of others is not a top-5 hit.
  Non-finite scores count as wrong. With fewer than 5 classes, top-5 is
  top-K (always right).
  """
  k = min(5, scores.shape[-1])
  true_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  rank = jnp.sum(scores >= true_score, axis=-1) - 1
  invalid = ~jnp.all(jnp.isfinite(scores), axis=-1)
  return ((rank >= 1) | invalid).astype(jnp.float32), (
      (rank >= k) | invalid
  ).astype(jnp.float32)


def make_train_step(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    shardings: TrainState,
    steps_per_epoch: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
  """A jitted `train_step(state, batch) -> (state, metrics)`.

  `batch` has `image` [B, S, S, 3] and `label` [B], sharded over DATA. The
  state's buffers are donated: do not use the old state afterwards.
  """
  apply = model_lib.make_apply(config.model, mesh)
  tx = optim.make_optimizer(config.optim, steps_per_epoch)

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logits = apply(params, batch["image"], rng, train=True)
      return cross_entropy(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    top1, top5 = topk_errors(logits, batch["label"])
    metrics = dict(
        loss=loss,
        top1_error=top1.mean(),
        top5_error=top5.mean(),
        # The rate this update used (recorded by the update).
        learning_rate=optim.get_learning_rate(opt_state),
    )
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics

  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(
      train_step,
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, None),
      donate_argnums=0,
      compiler_options=parallel.compiler_options(mesh),
  )


def make_predict(
    model_config: ml_collections.ConfigDict, mesh: Mesh
) -> Callable[[Any, Array], Array]:
  """A jitted `predict(params, images) -> log-probabilities [B, K]`.

  images [B, S, S, 3], or [B, C, S, S, 3] for C crops per example: the
  softmax is averaged over the crops (the paper's 10-patch test, §4.1).
  The result is the log of that average, computed in log space
  (logsumexp), so no class's probability underflows to a tie at 0.
  """
  apply = model_lib.make_apply(model_config, mesh)

  def predict(params, images):
    crops = images.shape[1] if images.ndim == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    log_probs = jax.nn.log_softmax(apply(params, flat).astype(jnp.float32))
    log_probs = log_probs.reshape(images.shape[0], crops, -1)
    return jax.nn.logsumexp(log_probs, axis=1) - jnp.log(crops)

  return jax.jit(predict, compiler_options=parallel.compiler_options(mesh))


def error_sums(
    log_probs: Array, labels: Array, mask: Array
) -> dict[str, Array]:
  """Sums over the real examples (mask 1) of loss, top-1/top-5 errors."""
  mask = mask.astype(jnp.float32)
  top1, top5 = topk_errors(log_probs, labels)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], -1)[:, 0]
  return dict(
      loss=jnp.sum(nll * mask),
      top1_error=jnp.sum(top1 * mask),
      top5_error=jnp.sum(top5 * mask),
      count=jnp.sum(mask),
  )
