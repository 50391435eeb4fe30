"""Resumable checkpoints (orbax) and preemption handling.

A checkpoint is one step directory under `<workdir>/checkpoints/` with two
items: `state`, the whole `steps.TrainState` (step, parameters, optimizer
state with its learning rate, dropout key), and `extra`, a small JSON dict
for host-side state the train program owns (plateau schedule, data
position, ...). Together they are everything needed to continue a run
identically.

    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=3,
                                   save_interval_steps=1000)
    state, extra = ckpt.restore_or(state, shardings)  # extra None: fresh run
    with checkpoint.PreemptionFlag() as preemption:
      for step in range(int(state.step) + 1, num_steps + 1):
        state, metrics = train_step(state, batch)
        ckpt.save(step, state, extra={...})       # every 1000 steps
        if preemption.should_stop(step):
          ckpt.save(step, state, extra={...}, force=True)
          break
    ckpt.close()                                   # last save is durable

Guarantees, and where they come from:

  * A half-written checkpoint is never restored. Orbax writes a step into
    `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once every
    file is written; a process killed mid-save leaves the tmp directory,
    which is not a step (and is deleted when the next Checkpointer starts:
    `cleanup_tmp_directories=True`).
  * Saves are asynchronous: `save` returns once the arrays are copied off
    the device, so the caller may donate or delete them right away; the
    files are written in a background thread. `wait()` / `close()` block
    until the last save is committed.
  * A checkpoint restores onto any mesh: the caller gives the target
    shardings and orbax reads each device's part.
  * A checkpoint of a different model (other widths, layers or optimizer)
    is refused with `CheckpointMismatchError`, which says what differs.
  * Multi-host: every process calls every method; orbax decides which
    process writes what. This module writes no files of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import types
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import orbax.checkpoint as ocp

from alexnet_jax import cli

PyTree = Any

# Checkpoints live in this subdirectory of the workdir, next to (not mixed
# with) summaries and logs.
CHECKPOINT_SUBDIR = "checkpoints"

# Item names inside a step directory.
_STATE = "state"
_EXTRA = "extra"

# At most this many differing arrays are listed in a mismatch error.
_MAX_LISTED = 8

# The JSON files orbax writes into a step directory (its metadata, the
# tree's structure and shardings, per-process array metadata, and the
# `extra` item).
_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")
_JSON_DIRS = ("array_metadatas",)


class CheckpointMismatchError(cli.UserError, ValueError):
  """The workdir holds a checkpoint of a different model than the config."""


class CheckpointUnreadableError(cli.UserError, OSError):
  """A complete checkpoint whose files cannot be read (damaged since)."""


# ---------------------------------------------------------------------------
# Typed PRNG keys. The TrainState's `rng` is a new-style key (`jax.random.key`,
# dtype key<impl>). It is stored as its raw uint32 `key_data`, so that the
# files are plain arrays any orbax version (or numpy) can read; the key's
# implementation comes from the restore template.
# ---------------------------------------------------------------------------


def _is_key(x: Any) -> bool:
  return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _keys_to_data(tree: PyTree) -> PyTree:
  """Replaces every typed key array of `tree` by its uint32 key data."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x) if _is_key(x) else x, tree
  )


def _key_impl(x: Any) -> str:
  """The implementation name of a key array or of an abstract one."""
  if isinstance(x, jax.Array):
    return jax.random.key_impl(x)
  # `key_impl` needs a concrete key; a scalar one of the same dtype is free.
  return jax.random.key_impl(jnp.zeros((), x.dtype))


def _data_to_keys(tree: PyTree, template: PyTree) -> PyTree:
  """Wraps key data back into typed keys where `template` has keys."""
  return jax.tree.map(
      lambda x, t: jax.random.wrap_key_data(x, impl=_key_impl(t))
      if _is_key(t)
      else x,
      tree,
      template,
  )


def _abstract_target(template: PyTree, shardings: PyTree | None) -> PyTree:
  """ShapeDtypeStructs with shardings, key arrays replaced by key data."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), template)
    if any(
        s is None
        for s in jax.tree.leaves(shardings, is_leaf=lambda s: s is None)
    ):
      raise ValueError(
          "restore_or needs the target shardings: pass `shardings`, or a "
          "template of jax.Arrays / ShapeDtypeStructs that carry them."
      )

  def abstract(x, sharding):
    if _is_key(x):
      data = jax.eval_shape(
          jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype)
      )
      # The key data has one trailing axis more; a NamedSharding's spec
      # leaves it whole, which is what the key needs.
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(abstract, template, shardings)


# ---------------------------------------------------------------------------
# Checkpoint compatibility: compare the stored array shapes with the target.
# ---------------------------------------------------------------------------


def _path_str(path: Sequence[Any]) -> str:
  """'params/conv1/kernel' for a key path (dict keys, attributes, indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(p): tuple(getattr(x, "shape", ())) for p, x in leaves}


def _check_compatible(stored: PyTree, target: PyTree, where: str) -> None:
  """Raises CheckpointMismatchError if the trees' arrays differ in shape."""
  have, want = _shapes_by_path(stored), _shapes_by_path(target)
  problems = [
      f"  {p}: missing in the checkpoint" for p in want if p not in have
  ]
  problems += [
      f"  {p}: in the checkpoint but not in the model"
      for p in have
      if p not in want
  ]
  problems += [
      f"  {p}: checkpoint {have[p]}, config {want[p]}"
      for p in want
      if p in have and have[p] != want[p]
  ]
  if problems:
    listed = problems[:_MAX_LISTED]
    if len(problems) > _MAX_LISTED:
      listed.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    raise CheckpointMismatchError(
        f"{where} holds a checkpoint of a different model than the one this "
        f"config builds ({len(problems)} array(s) differ):\n"
        + "\n".join(listed)
        + "\n"
        "To start a new run, use a new workdir; to continue this one, use "
        "the config it was started with."
    )


def _json_snapshot(extra: Mapping[str, Any] | None) -> dict[str, Any]:
  """A deep copy of `extra` through JSON: fails now, not in the background.

  Orbax serializes the JSON item in its save thread, so a bad value would
  only surface at the next save, and a dict changed after `save` returned
  would be written changed.
  """
  if extra is None:
    return {}
  try:
    # allow_nan: e.g. the plateau schedule's best error starts at +inf.
    return json.loads(json.dumps(dict(extra), allow_nan=True))
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"checkpoint `extra` must be JSON-serializable (dicts, lists, str, "
        f"Python numbers and bools); convert arrays with float()/int() or "
        f".tolist(): {e}"
    ) from e


@contextlib.contextmanager
def _stderr_held() -> Iterator[Callable[[], None]]:
  """Holds everything written to stderr (file descriptor 2, all threads) in
  a temporary file; yields a function that discards it. What is not
  discarded is written to stderr at the end.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  held = tempfile.TemporaryFile()
  discarded = False

  def discard():
    nonlocal discarded
    discarded = True

  os.dup2(held.fileno(), 2)
  try:
    yield discard
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    if not discarded:
      held.seek(0)
      sys.stderr.flush()
      os.write(2, held.read())
    held.close()


class Checkpointer:
  """Saves and restores a TrainState plus a JSON dict with orbax.

  Every process of a multi-host job must make the same calls in the same
  order (orbax synchronizes processes inside them).
  """

  def __init__(
      self,
      workdir: str | os.PathLike[str],
      *,
      max_to_keep: int | None = 3,
      save_interval_steps: int = 1000,
      async_save: bool = True,
  ):
    """Opens (creating if needed) `<workdir>/checkpoints`.

    Args:
      workdir: the run's directory.
      max_to_keep: how many of the latest checkpoints to keep (None: all).
      save_interval_steps: `save` without `force` writes only at multiples
        of this (and at a multi-host preemption sync point).
      async_save: write files in a background thread (the default).
    """
    if save_interval_steps < 1:
      raise ValueError(
          f"save_interval_steps={save_interval_steps} must be >= 1."
      )
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep} must be >= 1 or None.")
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        # The current spelling of save_interval_steps / max_to_keep (the
        # latter is deprecated in orbax 0.12). Orbax's default policy would
        # also save the very first step of a fresh run; ours saves only on
        # the interval, at the multi-host preemption sync point, or when
        # the caller forces it.
        save_decision_policy=policies.AnySavePolicy(
            [
                policies.FixedIntervalPolicy(save_interval_steps),
                policies.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=policies.LatestN(max_to_keep),
        # Deletes `<step>.orbax-checkpoint-tmp` directories that a killed
        # run left behind, before the first save (which would otherwise
        # collide with a leftover of the same step).
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        create=True,
    )
    # Naming the items' handlers up front lets `metadata(step)` read a
    # checkpoint's array shapes before anything is restored.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.StandardSave)
    registry.add(_STATE, ocp.args.StandardRestore)
    registry.add(_EXTRA, ocp.args.JsonSave)
    registry.add(_EXTRA, ocp.args.JsonRestore)
    # Absolute: orbax refuses a relative checkpoint path (the default
    # workdir, workdirs/<config name>, is relative to where one runs).
    self._directory = os.path.join(
        os.path.abspath(os.fspath(workdir)), CHECKPOINT_SUBDIR
    )
    self._manager = ocp.CheckpointManager(
        self._directory, options=options, handler_registry=registry
    )

  @property
  def directory(self) -> str:
    return self._directory

  def latest_step(self) -> int | None:
    """The latest step saved (or being saved), None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(
      self,
      step: int,
      state: PyTree,
      extra: Mapping[str, Any] | None = None,
      *,
      force: bool = False,
  ) -> bool:
    """Saves `state` and `extra` as checkpoint `step` if it is time to.

    Args:
      step: the number of training steps `state` has taken (a Python int).
      state: the TrainState (typed PRNG keys are fine). Once this returns
        the caller may donate or delete its arrays.
      extra: a JSON-serializable dict; returned by `restore_or`.
      force: save regardless of the interval (preemption, end of run).

    Returns:
      Whether a save was started. False when it is not time to, or when
      `step` is already saved (e.g. a forced save at the end of a run that
      just saved on the interval).
    """
    step = int(step)
    if force and step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        **{
            _STATE: ocp.args.StandardSave(_keys_to_data(state)),
            _EXTRA: ocp.args.JsonSave(_json_snapshot(extra)),
        }
    )
    saved = self._manager.save(step, args=args, force=force)
    if saved:
      logging.info("Saving checkpoint of step %d to %s.", step, self._directory)
    return saved

  def restore_or(
      self,
      state_template: PyTree,
      shardings: PyTree | None = None,
      *,
      step: int | None = None,
  ) -> tuple[PyTree, dict[str, Any] | None]:
    """Restores the latest checkpoint, or returns the template unchanged.

    Args:
      state_template: the TrainState to restore into, real or abstract
        (`jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`). It fixes the
        structure, shapes, dtypes and PRNG key implementation.
      shardings: target shardings, a tree like the state (the mesh may
        differ from the one that saved). Default: the template's own.
      step: a specific step instead of the latest.

    Returns:
      `(state, extra)` from the checkpoint; `(state_template, None)` when
      the directory holds none (a fresh run: pass a real state then).

    Raises:
      CheckpointMismatchError: the checkpoint is of a different model.
      CheckpointUnreadableError: its files cannot be read.
    """
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        return state_template, None
    target = _abstract_target(state_template, shardings)
    where = f"{self._directory} (step {step})"
    # orbax stops a restore at the first unreadable array and closes its
    # event loop while tensorstore's reads of the other arrays are still
    # running; as they finish, tensorstore's threads print "Event loop is
    # closed" tracebacks, which would bury the one message a damaged
    # checkpoint deserves. So stderr is held during the restore and, after
    # a failure, what the stray reads print is dropped.
    failure = None
    with _stderr_held() as discard:
      try:
        restored = self._restore(step, target, where)
      except CheckpointMismatchError:
        raise  # Found before any array is read.
      except Exception as e:  # pylint: disable=broad-exception-caught
        failure = e
        time.sleep(1.0)  # Lets the stray reads finish.
        discard()
    if failure is not None:
      # orbax and tensorstore report damaged files with many exception
      # types; none of them means "start over", so none is swallowed.
      raise self._unreadable(step, failure) from failure
    logging.info(
        "Restored checkpoint of step %d from %s.", step, self._directory
    )
    state = _data_to_keys(restored[_STATE], state_template)
    return state, dict(restored[_EXTRA])

  def _restore(self, step: int, target: PyTree, where: str) -> Any:
    """orbax's restore of `step`, after the checks that come before it."""
    _check_json_files(os.path.join(self._directory, str(step)))
    stored = self._manager.metadata(step).item_metadata
    stored = stored[_STATE] if stored is not None else None
    if stored is not None:
      _check_compatible(getattr(stored, "tree", stored), target, where)
    return self._manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardRestore(target),
                _EXTRA: ocp.args.JsonRestore(),
            }
        ),
    )

  def _unreadable(
      self, step: int, error: Exception
  ) -> CheckpointUnreadableError:
    path = os.path.join(self._directory, str(step))
    earlier = [s for s in self.all_steps() if s < step]
    todo = (
        f"To resume from step {earlier[-1]} (the previous checkpoint), "
        f"move {path} out of {self._directory} and rerun"
        if earlier
        else "There is no earlier checkpoint: move it away, or use a new "
        "workdir, to start over"
    )
    return CheckpointUnreadableError(
        f"the checkpoint of step {step} at {path} cannot be read (its files "
        f"were damaged after it was written: {type(error).__name__}: "
        f"{str(error)[:300]}). Nothing was changed. {todo}."
    )

  def wait(self) -> None:
    """Blocks until every started save is committed to disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's threads."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _check_json_files(step_dir: str) -> None:
  """Parses the step's JSON files; raises ValueError if one is damaged.

  Orbax reads them concurrently on an event loop that it closes as soon as
  one read fails; the reads still in flight then complete onto the closed
  loop and their threads print "Event loop is closed" tracebacks, racing
  the error message. Reading them here first, in this thread, turns the
  commonest damage (a truncated file) into one clean error before orbax
  starts. Damage to the array files is still caught by orbax's restore.
  """
  for directory, _, names in os.walk(step_dir):
    in_json_dir = os.path.basename(directory) in _JSON_DIRS
    for name in names:
      if in_json_dir or name in _JSON_FILES:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
          try:
            json.loads(f.read())
          except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------
# Preemption.
# ---------------------------------------------------------------------------


class PreemptionFlag:
  """SIGTERM / SIGINT become a flag the training loop reads between steps.

  Cluster schedulers announce a preemption with SIGTERM and kill the job a
  grace period later. Python's default is to die at once, losing the work
  since the last checkpoint. With this flag installed the signal only
  marks the stop; the loop finishes its step, saves (`force=True`) and
  returns normally, so the program exits with code 0 and the next run
  resumes from that step.

  A second SIGINT raises KeyboardInterrupt (Ctrl-C twice: stop now); a
  second SIGTERM is ignored (some launchers deliver it twice).

  Single process: the handlers set the flag; `should_stop(step)` is True
  from the next step boundary on.

  Multi-process (`jax.process_count() > 1`, after
  `jax.distributed.initialize`): a signal may reach only some processes,
  and a save is collective, so a local flag would make processes disagree
  about the step to save. JAX's preemption service already catches SIGTERM
  (its handler must not be replaced, so none is installed here) and agrees
  on a common step: `should_stop(step)` is
  `multihost_utils.reached_preemption_sync_point(step)`, which must be
  called at every step on every process. The Checkpointer's save policy
  also saves at that step.

  Install from the main thread (Python delivers signals there).
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._received: int | None = None
    self._previous: dict[int, Any] = {}
    self._multiprocess = False

  def install(self) -> PreemptionFlag:
    """Installs the handlers (single process); returns self."""
    self._multiprocess = jax.process_count() > 1
    if self._multiprocess:
      logging.info(
          "Preemption: %d processes; leaving SIGTERM to JAX's "
          "preemption service.",
          jax.process_count(),
      )
      return self
    for signum in self._signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def uninstall(self) -> None:
    """Puts back the handlers that were there before `install`."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def __enter__(self) -> PreemptionFlag:
    return self.install()

  def __exit__(self, *exc_info) -> None:
    self.uninstall()

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    if self._received is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      logging.warning("%s again: already stopping at the next step.", name)
      return
    self._received = signum
    # Logging from a signal handler is safe here: Python runs the handler
    # in the main thread between bytecodes, not in the C signal context.
    logging.warning(
        "%s received: saving a checkpoint and stopping at the "
        "next step boundary.",
        name,
    )

  def set(self) -> None:
    """Requests a stop as if a signal had come (e.g. a time limit).

    In a multi-process job every process must call it at the same step.
    """
    if self._received is None:
      self._received = signal.SIGTERM

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal (or `set`)."""
    return self._received is not None

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step`. Call it at every step."""
    if self._received is not None:
      return True
    if self._multiprocess:
      try:
        return multihost_utils.reached_preemption_sync_point(int(step))
      except RuntimeError:
        # The preemption service is off (jax_enable_preemption_service).
        return False
    return False
