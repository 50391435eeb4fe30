"""Checkpoints: round trip, other meshes, crashes, preemption, clear errors."""

import os
import re
import signal
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import parallel
from alexnet_jax import steps
from tests import helpers

# Orbax names a step directory being written "<step>" + this until it
# commits it with a rename.
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _state(mesh_shape=(1, 2), seed=0, **model_overrides):
  mesh = parallel.make_mesh(*mesh_shape)
  config = helpers.tiny_config(**model_overrides)
  state, shardings = steps.create_train_state(
      config, jax.random.key(seed), mesh
  )
  return state, shardings


def _host(tree):
  """Host copies of every leaf, typed keys as their key data."""

  def host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return jax.device_get(x)

  return jax.tree.map(host, tree)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, _host(a), _host(b))


def _assert_sharding(x, sharding):
  assert x.sharding == sharding, (x.sharding, sharding)


def test_fresh_workdir_gives_back_the_template(tmp_path):
  state, shardings = _state()
  ckpt = checkpoint.Checkpointer(tmp_path)
  restored, extra = ckpt.restore_or(state, shardings)
  assert restored is state and extra is None
  assert ckpt.latest_step() is None
  ckpt.close()


def test_round_trip_restores_every_array_key_and_extra(tmp_path):
  state, shardings = _state()
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  extra = {
      "plateau": {"best_error": float("inf"), "drops": 1},
      "data": {"step": 7},
  }
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(7, state, extra, force=True)
  # A new Checkpointer, as after a restart; an abstract template.
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 7
    restored, restored_extra = ckpt.restore_or(
        jax.eval_shape(lambda: state), shardings
    )
  assert restored_extra == extra
  assert isinstance(restored, steps.TrainState)
  # The dropout key comes back as a typed key of the same implementation.
  assert restored.rng.dtype == state.rng.dtype
  assert jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)
  _assert_same(restored, state)
  jax.tree.map(_assert_sharding, restored, shardings)


def test_relative_workdir(tmp_path, monkeypatch):
  # The default workdir (workdirs/<config name>) is relative; orbax refuses
  # relative paths.
  monkeypatch.chdir(tmp_path)
  state, shardings = _state()
  with checkpoint.Checkpointer("workdirs/run") as ckpt:
    assert ckpt.save(3, state, force=True)
  with checkpoint.Checkpointer("workdirs/run") as ckpt:
    assert ckpt.latest_step() == 3
    restored, _ = ckpt.restore_or(jax.eval_shape(lambda: state), shardings)
  _assert_same(restored, state)
  assert os.path.isdir(
      tmp_path / "workdirs/run" / checkpoint.CHECKPOINT_SUBDIR / "3"
  )


@pytest.mark.parametrize("target_mesh", [(1, 1), (2, 2)])
def test_restores_onto_another_mesh(tmp_path, target_mesh):
  """Saved with one tower per device; restored on 1 device and on 2 x 2."""
  saved, _ = _state((1, 2), seed=0)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, saved, {"data": {"step": 1}}, force=True)
  # Different seed: every value must come from the checkpoint.
  template, shardings = _state(target_mesh, seed=1)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    restored, _ = ckpt.restore_or(template, shardings)
  _assert_same(restored, saved)
  kernel = restored.params["conv1"]["kernel"]
  assert kernel.sharding == shardings.params["conv1"]["kernel"]
  assert len(kernel.sharding.device_set) == target_mesh[0] * target_mesh[1]


def test_interval_force_and_max_to_keep(tmp_path):
  state, _ = _state()
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2)
  assert not ckpt.save(1, state)  # Not on the interval.
  assert ckpt.save(2, state)
  assert ckpt.save(3, state, force=True)  # E.g. SIGTERM at step 3.
  assert ckpt.save(4, state)
  assert not ckpt.save(4, state)  # Already saved.
  assert not ckpt.save(4, state, force=True)  # End of run right after it.
  ckpt.wait()
  assert ckpt.all_steps() == [3, 4]
  assert sorted(os.listdir(ckpt.directory)) == ["3", "4"]
  ckpt.close()


def test_async_save_survives_donation_and_resume_equals_uninterrupted(tmp_path):
  """Train 2 steps == train 1, checkpoint, restore, train 1 (with dropout).

  The train step donates its input state right after `save` returned, so
  this also checks that an async save does not read freed buffers.
  """
  config = helpers.tiny_config()
  mesh = parallel.make_mesh(1, 2)
  state, shardings = steps.create_train_state(config, jax.random.key(0), mesh)
  train_step = steps.make_train_step(config, mesh, shardings)
  images = jax.random.normal(jax.random.key(1), (4, 99, 99, 3)) * 50
  batch = parallel.shard_batch(
      {"image": images, "label": jnp.arange(4) % 10}, mesh
  )

  state, _ = train_step(state, batch)
  after_one = _host(state)
  ckpt = checkpoint.Checkpointer(tmp_path, save_interval_steps=1)
  assert ckpt.save(1, state, {"data": {"step": 1}})
  state, _ = train_step(state, batch)  # Donates the buffers being saved.
  uninterrupted = _host(state)
  ckpt.close()

  template, _ = steps.create_train_state(config, jax.random.key(5), mesh)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    resumed, extra = ckpt.restore_or(template, shardings)
  assert extra == {"data": {"step": 1}}
  _assert_same(resumed, after_one)
  resumed, _ = train_step(resumed, batch)
  _assert_same(resumed, uninterrupted)


def test_checkpoint_of_another_model_is_refused_clearly(tmp_path):
  saved, _ = _state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, saved, force=True)
  wider, shardings = _state(conv_features=(6, 8, 12, 12, 10))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CheckpointMismatchError) as error:
      ckpt.restore_or(wider, shardings)
  message = str(error.value)
  assert "different model" in message
  assert "new workdir" in message
  assert (
      "params/conv5/kernel: checkpoint (2, 3, 3, 12, 8), config "
      "(2, 3, 3, 12, 10)"
  ) in message


def _files(root):
  """Path -> bytes of every file below `root`."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[path] = f.read()
  return out


@pytest.mark.parametrize("damage", ["truncate", "delete", "metadata"])
def test_damaged_checkpoint_is_reported_not_skipped(tmp_path, damage):
  """A complete checkpoint damaged afterwards: an error naming the step, its
  path and the previous step; no fresh start and no file touched.

  A damaged JSON file is found before orbax reads anything (see
  checkpoint._check_json_files) and named in the message.
  """
  state, shardings = _state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"data": {"step": 1}}, force=True)
    ckpt.save(
        2, state.replace(step=state.step + 1), {"data": {"step": 2}}, force=True
    )
  step_dir = os.path.join(tmp_path, checkpoint.CHECKPOINT_SUBDIR, "2")
  # Damage the array data (not the metadata): the largest files of step 2.
  files = sorted(
      (os.path.getsize(os.path.join(d, n)), os.path.join(d, n))
      for d, _, names in os.walk(step_dir)
      for n in names
  )
  if damage == "metadata":
    files = [(0, os.path.join(step_dir, "state", "_METADATA"))]
  for _, path in files[-3:]:
    if damage in ("truncate", "metadata"):
      with open(path, "r+b") as f:
        f.truncate(7)
    else:
      os.remove(path)
  before = _files(tmp_path)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2
    with pytest.raises(checkpoint.CheckpointUnreadableError) as error:
      ckpt.restore_or(jax.eval_shape(lambda: state), shardings)
  message = str(error.value)
  assert "step 2" in message and step_dir in message
  assert "resume from step 1" in message
  if damage == "metadata":
    assert os.path.join(step_dir, "state", "_METADATA") in message
  assert _files(tmp_path) == before
  # The previous step is intact and restores.
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    restored, extra = ckpt.restore_or(
        jax.eval_shape(lambda: state), shardings, step=1
    )
  assert extra == {"data": {"step": 1}}
  _assert_same(restored, state)


# Saves step 1, then dies by SIGKILL in the middle of saving step 2: at the
# rename that commits it, i.e. with every file of step 2 written.
_CRASH_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax
    from alexnet_jax import checkpoint, parallel, steps
    from tests import helpers

    mesh = parallel.make_mesh(1, 2)
    state, _ = steps.create_train_state(helpers.tiny_config(),
                                        jax.random.key(0), mesh)
    ckpt = checkpoint.Checkpointer(sys.argv[1], save_interval_steps=1)
    ckpt.save(1, state, {"data": {"step": 1}})
    ckpt.wait()

    rename = os.rename
    def crash_at_commit(src, dst, *args, **kwargs):
      if os.path.basename(os.fspath(dst)) == "2":
        os.kill(os.getpid(), signal.SIGKILL)
      return rename(src, dst, *args, **kwargs)
    os.rename = crash_at_commit

    ckpt.save(2, state.replace(step=state.step + 1), {"data": {"step": 2}})
    ckpt.wait()
    print("step 2 was committed: the crash did not happen")
""")


def test_half_written_checkpoint_is_never_restored(tmp_path):
  proc = helpers.run_code(
      _CRASH_DURING_SAVE, str(tmp_path), num_devices=2, timeout=120
  )
  assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
  directory = os.path.join(tmp_path, checkpoint.CHECKPOINT_SUBDIR)
  # Step 2 is complete on disk but not committed.
  assert sorted(os.listdir(directory)) == ["1", "2" + TMP_SUFFIX]
  assert os.listdir(os.path.join(directory, "2" + TMP_SUFFIX))

  template, shardings = _state(seed=3)
  ckpt = checkpoint.Checkpointer(tmp_path, save_interval_steps=1)
  assert ckpt.all_steps() == [1]
  restored, extra = ckpt.restore_or(template, shardings)
  assert extra == {"data": {"step": 1}}
  assert int(restored.step) == 0
  # The run goes on from step 1 and next saves step 3 (a resumed run need
  # not save step 2 again): the leftover of step 2 is deleted, not kept
  # forever, and step 3 is what a restart restores.
  assert ckpt.save(
      3, restored.replace(step=restored.step + 2), {"data": {"step": 3}}
  )
  ckpt.close()
  assert sorted(os.listdir(directory)) == ["1", "3"]
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    restored, extra = ckpt.restore_or(template, shardings)
  assert extra == {"data": {"step": 3}}
  assert int(restored.step) == 2


# A training loop in miniature: one "step" every 10 ms, periodic saves far
# apart, and the preemption flag checked at every step boundary.
_PREEMPTIBLE_LOOP = textwrap.dedent("""
    import sys, time
    import jax
    from alexnet_jax import checkpoint, parallel, steps
    from tests import helpers

    mesh = parallel.make_mesh(1, 2)
    state, _ = steps.create_train_state(helpers.tiny_config(),
                                        jax.random.key(0), mesh)
    train_step = jax.jit(lambda s: s.replace(step=s.step + 1),
                         donate_argnums=0)
    ckpt = checkpoint.Checkpointer(sys.argv[1], save_interval_steps=1000)
    deadline = time.time() + 60
    with checkpoint.PreemptionFlag() as preemption:
      step = 0
      while time.time() < deadline:
        state = train_step(state)
        step += 1
        ckpt.save(step, state, {"data": {"step": step}})
        if step == 3:
          print("READY", flush=True)
        if preemption.should_stop(step):
          ckpt.save(step, state, {"data": {"step": step}}, force=True)
          break
        time.sleep(0.01)
      else:
        sys.exit("no SIGTERM came")
    ckpt.close()
    print("STOPPED", step, flush=True)
""")


def test_sigterm_saves_at_the_step_boundary_and_exits_cleanly(tmp_path):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "run.log")
  proc = helpers.start_code(
      _PREEMPTIBLE_LOOP, workdir, stdout=log, env=helpers.fake_devices(2)
  )
  try:
    _wait_for(
        lambda: "READY" in helpers.read(log) or proc.poll() is not None,
        timeout=120,
    )
    assert proc.poll() is None, helpers.read(log)
    proc.send_signal(signal.SIGTERM)  # To the child, never to pytest.
    proc.wait(timeout=120)
  finally:
    proc.kill()
  out = helpers.read(log)
  assert proc.returncode == 0, out
  stopped_at = int(re.search(r"STOPPED (\d+)", out).group(1))
  assert stopped_at >= 3

  template, shardings = _state(seed=4)
  with checkpoint.Checkpointer(workdir) as ckpt:
    assert ckpt.all_steps() == [stopped_at]
    restored, extra = ckpt.restore_or(template, shardings)
  assert extra == {"data": {"step": stopped_at}}
  assert int(restored.step) == stopped_at
  saved, _ = _state(seed=0)
  _assert_same(restored.params, saved.params)
  _assert_same(restored.rng, saved.rng)


def _wait_for(predicate, timeout=5.0):
  end = time.time() + timeout
  while not predicate() and time.time() < end:
    time.sleep(0.01)
  return predicate()


def test_preemption_flag_turns_signals_into_a_flag():
  # A fallback under the flag's handler, so that a broken flag fails this
  # test instead of terminating pytest.
  fallback_calls = []

  def fallback(*_):
    fallback_calls.append(1)

  previous = signal.signal(signal.SIGTERM, fallback)
  try:
    _check_preemption_flag()
    assert not fallback_calls  # The flag took both SIGTERMs.
    assert signal.getsignal(signal.SIGTERM) is fallback  # Put back.
  finally:
    signal.signal(signal.SIGTERM, previous)


def _check_preemption_flag():
  with checkpoint.PreemptionFlag() as preemption:
    assert not preemption.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # As a scheduler sends it.
    assert _wait_for(lambda: preemption.requested)
    assert preemption.should_stop(2)
    os.kill(os.getpid(), signal.SIGTERM)  # A second SIGTERM is ignored.
    time.sleep(0.05)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after that: stop now.
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
  # Ctrl-C alone is a request to stop at the next step, like SIGTERM
  # (Python's default handler would raise at once); only a second Ctrl-C
  # raises.
  before = signal.getsignal(signal.SIGINT)
  with checkpoint.PreemptionFlag() as preemption:
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    os.kill(os.getpid(), signal.SIGINT)
    assert _wait_for(lambda: preemption.requested)
    assert preemption.should_stop(1)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
  assert signal.getsignal(signal.SIGINT) is before


def test_extra_must_be_json(tmp_path):
  state, _ = _state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(TypeError, match="JSON-serializable"):
      ckpt.save(1, state, {"loss": np.ones(2)}, force=True)
    assert ckpt.all_steps() == []
