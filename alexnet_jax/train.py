"""The training program: data, mesh, loop, checkpoints, evaluation, results.

`train_and_evaluate(config, workdir)` is what `main.py` calls; a notebook can
call it too. Resume is the default: if `workdir` holds a checkpoint, the run
continues from it exactly (parameters, optimizer state, learning-rate and
plateau state, RNG and data position: the data stream is a pure function of
the step, see input_pipeline.py). The data come from run_data.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from alexnet_jax import checkpoint
from alexnet_jax import eval_lib
from alexnet_jax import figures
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import run_data
from alexnet_jax import steps
from alexnet_jax import summaries
from alexnet_jax.data import release


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. a NaN loss); the message says what to do."""


# Errors whose message tells the user what to change: main prints them
# without a traceback.
USER_ERRORS = (
    TrainingError,
    parallel.MeshError,
    release.Ilsvrc2010Error,
    checkpoint.CheckpointMismatchError,
)


def save_workdir_config(
    config: ml_collections.ConfigDict, workdir: str
) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def _check_config(config: ml_collections.ConfigDict, mesh: Any) -> None:
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh)
  _, shards = parallel.process_data_shard(mesh)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % shards:
      raise parallel.MeshError(
          f"{name}={config[name]} is not divisible by the {shards} "
          "processes that read different data."
      )
  if config.num_epochs <= 0:
    raise ValueError(f"num_epochs={config.num_epochs} must be > 0.")


class _Progress:
  """steps/s, images/s and ETA between logging steps (no per-step syncs)."""

  def __init__(self, step: int, total_steps: int, batch_size: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self.last_step, self.last_time = step, None
    self.train_seconds, self.timed_steps = 0.0, 0

  def start(self, step: int) -> None:
    """Starts the clock (after the first, compiling step)."""
    self.last_step, self.last_time = step, time.time()

  def update(self, step: int) -> dict[str, float]:
    now = time.time()
    if self.last_time is None:
      self.start(step)
      return {}
    seconds, done = now - self.last_time, step - self.last_step
    self.train_seconds += seconds
    self.timed_steps += done
    self.last_step, self.last_time = step, now
    rate = done / max(seconds, 1e-9)
    return dict(
        steps_per_sec=rate,
        images_per_sec=rate * self.batch_size,
        eta_seconds=(self.total_steps - step) / max(rate, 1e-9),
    )

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (an evaluation, say) out of the training rate."""
    if self.last_time is not None:
      self.last_time += seconds

  @property
  def images_per_sec(self) -> float:
    return self.timed_steps * self.batch_size / max(self.train_seconds, 1e-9)


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _check_finite(metrics: dict[str, Any], step: int, ckpt: Any) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    ckpt.wait()  # A save still in flight is committed first.
    last = ckpt.latest_step()
    kept = (
        f"the last good checkpoint (step {last}) is kept in "
        f"{ckpt.directory}"
        if last is not None
        else "no checkpoint had been written yet"
    )
    ckpt.close()
    raise TrainingError(
        f"loss is {loss} at step {step}: training stopped; {kept}. Try a "
        "lower optim.learning_rate, model.init=caffe, or check the data."
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`, evaluates, writes results.json.

  Returns the results dict that is also written to `workdir/results.json`.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(
      config.mesh.data, config.mesh.model, num_towers=config.model.num_towers
  )
  _check_config(config, mesh)
  logging.info(
      "mesh %s on %d %s devices, %d process(es)",
      dict(mesh.shape),
      mesh.devices.size,
      jax.default_backend(),
      jax.process_count(),
  )
  data = run_data.Data(config, mesh)
  steps_per_epoch = data.steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch

  state, shardings = steps.create_train_state(
      config, jax.random.key(config.seed), mesh, steps_per_epoch
  )
  ckpt = checkpoint.Checkpointer(
      workdir,
      max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps,
  )
  plateau = optim.PlateauSchedule.from_config(config.optim)
  state, extra = ckpt.restore_or(state, shardings)
  # Written once the data and any checkpoint have been read: a run that
  # fails to start leaves an existing workdir as it was.
  save_workdir_config(config, workdir)
  writer = summaries.SummaryWriter(workdir)
  start_step = int(jax.device_get(state.step))
  if extra is not None:
    plateau.load_state_dict(extra["plateau"])
    logging.info("resumed from step %d in %s", start_step, ckpt.directory)

  train_step = steps.make_train_step(config, mesh, shardings, steps_per_epoch)
  progress = _Progress(start_step, total_steps, config.batch_size)
  preemption = checkpoint.PreemptionFlag()
  eval_every = config.eval_every_epochs * steps_per_epoch

  def extra_state():
    return dict(plateau=plateau.state_dict(), steps_per_epoch=steps_per_epoch)

  # XLA:CPU with several (fake) devices can deadlock when the next step's
  # collectives are dispatched while the previous program still runs
  # (seen in about 1 of 3 long CPU runs, never with this wait; no measurable
  # cost on CPU). Accelerators keep asynchronous dispatch.
  sync_every_step = jax.default_backend() == "cpu" and mesh.devices.size > 1
  step = start_step
  logging.info(
      "training steps %d..%d (%d per epoch, batch %d)",
      start_step,
      total_steps,
      steps_per_epoch,
      config.batch_size,
  )
  # The endless training stream is closed when the loop ends, however it
  # ends: its tf.data iterator is then destroyed here, while the interpreter
  # runs. Left to interpreter teardown, TensorFlow's destructor can hang
  # waiting for its threads.
  with (
      contextlib.closing(data.train_batches(start_step)) as batches,
      preemption,
  ):
    while step < total_steps and not plateau.done:
      state, metrics = train_step(state, next(batches))
      if sync_every_step:
        jax.block_until_ready(metrics)
      step += 1
      if step == start_step + 1:
        progress.start(step)  # The first step compiled; time from here.
      stop = preemption.should_stop(step)
      is_log = step % config.log_every_steps == 0 or step == total_steps
      is_ckpt = step % config.checkpoint_every_steps == 0 or stop
      if is_log or is_ckpt:
        # Never save a state whose loss is not finite.
        metrics = jax.device_get(metrics)
        _check_finite(metrics, step, ckpt)
      if is_log:
        rates = progress.update(step)
        _log_train(writer, step, steps_per_epoch, metrics, rates)
      if step % eval_every == 0 and config.eval_split:
        result = eval_lib.evaluate(
            [(config, state.params)],
            mesh,
            data.eval_batches(config.eval_split, "center"),
        )
        progress.exclude(result["seconds"])
        _log_eval(writer, step, config.eval_split, "center", result)
        if config.optim.schedule == "plateau":
          lr = _update_plateau(
              plateau, result["top1_error"], step, steps_per_epoch
          )
          state = state.replace(
              opt_state=optim.set_learning_rate(state.opt_state, lr)
          )
      if is_ckpt:
        ckpt.save(step, state, extra_state(), force=stop)
      if stop:
        ckpt.close()
        writer.close()
        logging.info(
            "stopped by a signal: saved step %d; rerun the same "
            "command to resume.",
            step,
        )
        return dict(preempted=True, step=step)
    # Final checkpoint (skipped if this step is already saved).
    ckpt.save(step, state, extra_state(), force=True)
    ckpt.wait()

  results = dict(
      dataset=config.dataset,
      step=step,
      epochs=step / steps_per_epoch,
      train_images_per_sec=progress.images_per_sec,
      evaluations={},
  )
  if config.optim.schedule == "plateau":
    # Each drop: epoch, step, the validation error that caused it, the
    # window means compared and the new rate; the stop likewise (None:
    # the run ended at num_epochs).
    results["learning_rate_drops"] = plateau.drops
    results["plateau_stop"] = plateau.stop
  for split in (config.eval_split, config.test_split):
    if not split:
      continue
    results["evaluations"][split] = {}
    for crops in config.final_eval_crops:
      r = eval_lib.evaluate(
          [(config, state.params)], mesh, data.eval_batches(split, crops)
      )
      r["images_per_sec"] = r["count"] / max(r.pop("seconds"), 1e-9)
      results["evaluations"][split][crops] = r
      _log_eval(writer, step, split, crops, r, prefix="final")
  results["baselines"] = data.baselines()
  results["summary"] = eval_lib.format_table(
      results["evaluations"],
      [
          (f"trivial baseline ({k})", f"{100 * v:.1f}% top-1 error")
          for k, v in results["baselines"].items()
      ]
      + [
          (
              "training",
              f"{results['train_images_per_sec']:.0f} images/s over "
              f"{step} steps",
          )
      ],
  )
  # Figure 3 and each tower's color share (figures.color_summary).
  results["conv1"] = figures.write_conv1(writer, workdir, state.params, step)
  writer.close()
  ckpt.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def _update_plateau(plateau, val_error, step, steps_per_epoch):
  """Feeds an evaluation to the plateau schedule; logs a drop or the stop."""
  drops, was_done = len(plateau.drops), plateau.done
  epoch = step / steps_per_epoch
  old_lr = plateau.learning_rate
  lr = plateau.update(val_error, epoch, step)
  event = None
  if plateau.done and not was_done:
    event = plateau.stop
  elif len(plateau.drops) > drops:
    event = plateau.drops[-1]
  if event is not None:
    why = (
        f"validation top-1 error {100 * val_error:.2f}% at epoch "
        f"{epoch:g}: mean {100 * event['mean_error']:.2f}% over the last "
        f"{plateau.patience_epochs:g} epochs vs "
        f"{100 * event['previous_mean_error']:.2f}% before (needs "
        f"{100 * plateau.min_improvement:.2f}% lower)"
    )
    if plateau.done:
      logging.info("plateau with all %d drops done, %s: stopping.", drops, why)
    else:
      logging.info(
          "plateau, %s: learning rate %.3g -> %.3g (drop %d of " "%d).",
          why,
          old_lr,
          lr,
          len(plateau.drops),
          plateau.max_drops,
      )
  return lr


def _log_train(writer, step, steps_per_epoch, metrics, rates):
  scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
  scalars.update({f"perf/{k}": v for k, v in rates.items()})
  writer.scalars(step, scalars)
  line = (
      f"step {step} (epoch {step / steps_per_epoch:.2f}) "
      f"loss {metrics['loss']:.4f} top-1 err "
      f"{100 * metrics['top1_error']:.1f}% lr "
      f"{metrics['learning_rate']:.2g}"
  )
  if rates:
    line += (
        f" | {rates['images_per_sec']:.0f} img/s, "
        f"{rates['steps_per_sec']:.2f} steps/s, ETA "
        f"{_format_eta(rates['eta_seconds'])}"
    )
  logging.info(line)


def _log_eval(writer, step, split, crops, result, prefix="eval"):
  writer.scalars(
      step,
      {
          f"{prefix}/{split}/{crops}/top1_error": result["top1_error"],
          f"{prefix}/{split}/{crops}/top5_error": result["top5_error"],
          f"{prefix}/{split}/{crops}/loss": result["loss"],
      },
  )
  logging.info(
      "%s %s (%s crop): top-1 error %.2f%%, top-5 error %.2f%% "
      "over %d images",
      prefix,
      split,
      crops,
      100 * result["top1_error"],
      100 * result["top5_error"],
      result["count"],
  )
