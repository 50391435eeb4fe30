"""The training program end to end on the generated mini data (CPU).

All runs share one generated + prepared copy of the `configs/demo.py:smoke`
data set and one complete run of the command line (the session fixtures
`smoke_dirs` and `uninterrupted` in conftest.py). Runs in subprocesses are
the real command line, for what is about the process (signals, exit codes,
several processes); the rest call `train.train_and_evaluate` in this
process. Subprocess output goes to files, never to undrained pipes.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import eval_lib
from alexnet_jax import figures
from alexnet_jax import input_pipeline
from alexnet_jax import train
from alexnet_jax import weights
from tests import helpers


smoke_config = helpers.smoke_config
final_params = helpers.final_params
run_main = helpers.run_main


def wait_for_checkpoint(workdir, proc, log, timeout=300):
  """Waits until the run has committed its first checkpoint."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(ckpt_dir) and any(
        name.isdigit() and os.path.exists(
            os.path.join(ckpt_dir, name, "commit_success.txt"))
        for name in os.listdir(ckpt_dir)):
      return
    assert proc.poll() is None, helpers.read(log)
    time.sleep(0.2)
  raise TimeoutError("no checkpoint appeared")


def scalars(workdir, tag):
  """{step: value} of a TensorBoard scalar over all event files in workdir.

  A resumed run writes a second event file; the later file wins.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  values = {}
  for name in sorted(os.listdir(workdir),
                     key=lambda n: os.path.getmtime(os.path.join(workdir, n))):
    if not name.startswith("events.out.tfevents"):
      continue
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(workdir, name)):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = value.simple_value
  return values


def test_results_json_table_and_pictures(uninterrupted):
  workdir, results = uninterrupted
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 10 and saved["epochs"] == 2.0
  for split in ("validation", "test"):
    for crops in ("center", "ten"):
      r = saved["evaluations"][split][crops]
      assert r["count"] == 30  # 3 images x 10 classes, each exactly once.
      assert 0.0 <= r["top1_error"] <= 1.0
      assert r["top5_error"] <= r["top1_error"]
  assert saved["train_images_per_sec"] > 0
  assert set(saved["baselines"]) == {"pixels_top1_error",
                                     "mean_color_top1_error",
                                     "chance_top1_error"}
  # The results table is printed at the end.
  assert "validation   ten" in results and "trivial baseline" in results
  # Figure 3: 2 towers x 4 kernels (smoke width), tower 0 above tower 1,
  # each under its label line.
  picture = np.asarray(Image.open(os.path.join(workdir, "conv1.png")))
  assert picture.shape == (2 * (11 * 4 + 1 + figures.LABEL_HEIGHT) + 8,
                           4 * (11 * 4 + 1), 3)
  # Each tower's color share (Figure 3's split) is in results.json.
  shares = saved["conv1"]["tower_mean"]
  assert len(shares) == 2 and all(0.0 <= v <= 1.0 for v in shares)
  assert np.shape(saved["conv1"]["per_kernel"]) == (2, 4)
  assert any(name.startswith("events.out.tfevents")
             for name in os.listdir(workdir))
  config = eval_lib.load_workdir_config(workdir)
  assert config.model.conv_features == (4, 8, 8, 8, 8)


def test_neighbors_command_on_the_smoke_run(uninterrupted, tmp_path):
  """Figure 4 on the smoke run: the same numbers on 2x1 and 1x2 meshes."""
  workdir, _ = uninterrupted
  results = []
  for mesh_model in (1, 2):
    out = str(tmp_path / f"model{mesh_model}")
    proc = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.neighbors", f"--workdir={workdir}",
         f"--output_dir={out}", f"--mesh_model={mesh_model}", "--show=4"],
        cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"wrote {out}/neighbors.png" in proc.stdout
    with open(os.path.join(out, "neighbors.json")) as f:
      results.append(json.load(f))
    # 4 rows: the query, 6 feature and 6 pixel neighbours (64x64 crops in
    # 68-pixel cells, 2 gaps of 12), under a 20-pixel header.
    picture = np.asarray(Image.open(os.path.join(out, "neighbors.png")))
    assert picture.shape == (20 + 4 * 68, 13 * 68 + 2 * 12, 3)
  first = results[0]
  # 30 test images, 80 training images, fc7 of 2 towers x 16 units.
  assert (first["queries"], first["train_images"], first["feature_dim"]) == (
      30, 80, 32)
  assert 0.0 <= first["feature_same_label"] <= 1.0
  assert 0.0 <= first["pixel_same_label"] <= 1.0
  assert np.shape(first["shown"]["feature_neighbor_labels"]) == (4, 6)
  for r in results:
    r.pop("seconds")
  assert results[0] == results[1]


def test_steps_schedule_rates_in_a_real_run(uninterrupted):
  """The smoke run (optim.schedule=steps): 0.02, /10 after epoch 1 (step 5).

  The rate each logged step used, as the program recorded it.
  """
  assert scalars(uninterrupted[0], "train/learning_rate") == pytest.approx(
      {2: 0.02, 4: 0.02, 6: 0.002, 8: 0.002, 10: 0.002})


def test_killed_and_resumed_equals_uninterrupted(smoke_dirs, uninterrupted,
                                                 tmp_path):
  """SIGKILL after the first checkpoint, rerun: resumes, same parameters."""
  workdir = str(tmp_path / "killed")
  log = str(tmp_path / "killed.log")
  proc = helpers.start_main(smoke_dirs, workdir, log=log)
  try:
    wait_for_checkpoint(workdir, proc, log)
  finally:
    proc.kill()  # SIGKILL: no chance to save anything more.
    proc.wait()
  killed_at = checkpoint.Checkpointer(workdir).latest_step()
  assert killed_at is not None and 0 < killed_at < 10
  out = run_main(smoke_dirs, workdir).stdout  # The same command resumes.
  # ... from the killed step, not from step 0 (the smoke run is
  # deterministic: a restart would end with the same bits).
  assert f"resumed from step {killed_at} in " in out, out
  assert f"training steps {killed_at}..10 " in out, out
  config = smoke_config(smoke_dirs)
  resumed, step = final_params(workdir, config)
  expected, expected_step = final_params(uninterrupted[0], config)
  assert step == expected_step == 10
  # Bit-identical: same data, dropout masks, momentum and schedule.
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)
  # The rates after the resume follow the schedule too.
  rates = scalars(workdir, "train/learning_rate")
  want = scalars(uninterrupted[0], "train/learning_rate")
  assert {s: v for s, v in rates.items() if s > killed_at} == pytest.approx(
      {s: v for s, v in want.items() if s > killed_at})


def test_sigterm_saves_and_restores_on_another_mesh_and_ensembles(
    smoke_dirs, uninterrupted, tmp_path):
  workdir = str(tmp_path / "sigterm")
  log = str(tmp_path / "sigterm.log")
  proc = helpers.start_main(smoke_dirs, workdir, "--config.num_epochs=200",
                            log=log)
  try:
    wait_for_checkpoint(workdir, proc, log)
    proc.send_signal(signal.SIGTERM)  # To the child, never to pytest.
    proc.wait(timeout=120)
  finally:
    proc.kill()
  out = helpers.read(log)
  assert proc.returncode == 0, out
  assert "stopped by a signal" in out
  stopped_at = checkpoint.Checkpointer(workdir).latest_step()
  assert 4 <= stopped_at < 1000
  assert f"saved step {stopped_at};" in out
  # Trained on 2 devices (model=2), evaluated on 1 device holding both
  # towers; an ensemble with the uninterrupted run.
  output = tmp_path / "eval.json"
  proc = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.evaluate",
       f"--workdir={uninterrupted[0]}", f"--workdir={workdir}",
       "--mesh_data=1", "--mesh_model=1", "--crops=center,ten",
       f"--output={output}"],
      cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  results = json.loads(output.read_text())["results"]["validation"]
  assert results["center"]["count"] == results["ten"]["count"] == 30
  assert "ten" in proc.stdout


def _plateau_config(smoke_dirs, num_epochs):
  """A rule that always sees a plateau: a drop at epoch 2, the stop at 4."""
  config = smoke_config(smoke_dirs, num_epochs=num_epochs, log_every_steps=1)
  config.optim.update(schedule="plateau", max_drops=1, patience_epochs=1,
                      min_epochs_per_rate=1, min_improvement=1.0)
  return config


def test_plateau_drops_are_logged_and_recorded_survive_a_resume_and_stop(
    smoke_dirs, tmp_path, caplog):
  """The paper's schedule end to end, stopped after the drop and resumed.

  The first run ends at epoch 3, after the drop at epoch 2; the second,
  allowed 5 epochs, resumes at step 15 with the plateau's state (rate,
  drops, window) and stops on the plateau at epoch 4.
  """
  workdir = str(tmp_path / "plateau")
  with caplog.at_level(logging.INFO):
    first = train.train_and_evaluate(_plateau_config(smoke_dirs, 3), workdir)
  assert first["step"] == 15 and first["plateau_stop"] is None
  assert "learning rate 0.02 -> 0.002 (drop 1 of 1)" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(_plateau_config(smoke_dirs, 5),
                                       workdir)
  assert "resumed from step 15" in caplog.text
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["learning_rate_drops"] == results[
        "learning_rate_drops"]
  assert results["step"] == 20  # Stopped at epoch 4 of 5.
  (drop,) = results["learning_rate_drops"]
  assert drop == first["learning_rate_drops"][0]
  assert (drop["epoch"], drop["step"]) == (2.0, 10)
  assert drop["new_learning_rate"] == pytest.approx(0.002)  # 0.02 / 10.
  assert 0.0 <= drop["val_error"] <= 1.0
  assert drop["mean_error"] == drop["val_error"]  # A 1-epoch window.
  assert (results["plateau_stop"]["epoch"],
          results["plateau_stop"]["step"]) == (4.0, 20)
  assert "plateau with all 1 drops done" in caplog.text
  # The rate of every step, both runs: 0.02 up to the drop, then 0.002.
  rates = scalars(workdir, "train/learning_rate")
  assert rates == pytest.approx(
      {s: 0.02 if s <= 10 else 0.002 for s in range(1, 21)})


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    smoke_dirs, tmp_path, caplog):
  workdir = str(tmp_path / "nan")
  train.train_and_evaluate(smoke_config(smoke_dirs, num_epochs=1), workdir)
  assert checkpoint.Checkpointer(workdir).latest_step() == 5
  config = smoke_config(smoke_dirs, num_epochs=2, log_every_steps=1)
  config.optim.learning_rate = 1e30
  # Resumed at step 5: step 6 uses the rate (its loss is still finite),
  # step 7's loss is not.
  with caplog.at_level(logging.INFO), pytest.raises(
      train.TrainingError,
      match=r"loss is (nan|inf) at step 7: .*step 5\) is kept"):
    train.train_and_evaluate(config, workdir)
  assert "resumed from step 5" in caplog.text
  assert checkpoint.Checkpointer(workdir).latest_step() == 5


def _wait_all(procs, logs, timeout=600):
  """Waits for every process; checks rc 0; returns their outputs."""
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    for p in procs:
      p.kill()
  outputs = [helpers.read(log) for log in logs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  return outputs


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two_processes(smoke_dirs, workdir, tmp_path, *flags):
  """The smoke run as two JAX processes on loopback, one CPU device each:
  (processes, their log files)."""
  port = _free_port()
  logs = [str(tmp_path / f"process{i}.log") for i in range(2)]
  procs = [helpers.start_main(smoke_dirs, workdir, "--config.cpu_devices=1",
                              f"--coordinator_address=127.0.0.1:{port}",
                              "--num_processes=2", f"--process_id={i}",
                              *flags, log=logs[i])
           for i in range(2)]
  return procs, logs


def test_two_processes_on_loopback_match_one_process(smoke_dirs,
                                                     uninterrupted,
                                                     tmp_path):
  """Two JAX processes, one CPU device each, form the 2-tower mesh.

  Real multi-process JAX (jax.distributed over loopback, gloo collectives):
  each process holds one tower; both read the same batches (they hold the
  same data row). The result matches the single-process run.
  """
  workdir = str(tmp_path / "two_processes")
  outputs = _wait_all(*_start_two_processes(smoke_dirs, workdir, tmp_path))
  assert "process 0 of 2" in outputs[0] and "process 1 of 2" in outputs[1]
  config = smoke_config(smoke_dirs)
  got, step = final_params(workdir, config)
  expected, _ = final_params(uninterrupted[0], config)
  assert step == 10
  # Other compiled programs (cross-process collectives): equal up to float
  # rounding, far below what one different batch or mask would change.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               got, expected)


def test_evaluate_imported_npz_equals_its_checkpoint(smoke_dirs,
                                                     uninterrupted,
                                                     tmp_path):
  """Exported weights, evaluated from the .npz, give the workdir's errors."""
  workdir = uninterrupted[0]
  config = smoke_config(smoke_dirs)
  params, _ = final_params(workdir, config)
  npz = tmp_path / "weights.npz"
  weights.export_npz(npz, params)
  output = tmp_path / "npz.json"
  proc = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.evaluate", f"--npz={npz}",
       "--config=configs/demo.py:smoke", f"--config.data_dir={smoke_dirs[0]}",
       f"--config.manual_dir={smoke_dirs[1]}", "--config.cpu_devices=2",
       "--crops=center", f"--output={output}"],
      cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  got = json.loads(output.read_text())["results"]["validation"]["center"]
  with open(os.path.join(workdir, "results.json")) as f:
    want = json.load(f)["evaluations"]["validation"]["center"]
  assert got["count"] == want["count"] == 30
  assert got["top1_error"] == want["top1_error"]
  assert got["top5_error"] == want["top5_error"]
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)


def test_two_processes_reading_different_data_match_one_process(
    smoke_dirs, tmp_path, monkeypatch):
  """mesh.data=2 over two processes: each reads its half of every batch.

  Each process reads its own part of the training split (TFDS's
  per-process split) and its half of every evaluation batch. The reference
  runs here, in one process on the same 2 x 1 mesh, with global batches
  made of what process 0 and process 1 read: the two-process run must
  train on exactly those. Had both processes read the same examples (or
  overlapping halves), every step would differ; its evaluations must equal
  the one-process evaluation of all images.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  flags = ("--config.mesh.data=2", "--config.mesh.model=1")
  workdir = str(tmp_path / "two_processes")
  procs, logs = _start_two_processes(smoke_dirs, workdir, tmp_path, *flags)
  make_train_dataset = input_pipeline.make_train_dataset

  def two_processes_data(builder, **kwargs):
    assert kwargs["process_count"] == 1  # This one process reads it all.
    parts = [make_train_dataset(builder, **dict(kwargs, process_index=i,
                                                process_count=2))
             for i in range(2)]
    return tf.data.Dataset.zip(tuple(parts)).map(
        lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a})

  monkeypatch.setattr(input_pipeline, "make_train_dataset",
                      two_processes_data)
  one_workdir = str(tmp_path / "one_process")
  config = smoke_config(smoke_dirs)
  config.mesh.update(data=2, model=1)
  one = train.train_and_evaluate(config, one_workdir)
  outputs = _wait_all(procs, logs)
  assert "process 1 of 2" in outputs[1]
  got, step = final_params(workdir, config)
  expected, _ = final_params(one_workdir, config)
  assert step == one["step"] == 10
  # Other compiled programs (cross-process collectives): equal up to float
  # rounding, far below what one different example would change.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               got, expected)
  with open(os.path.join(workdir, "results.json")) as f:
    two = json.load(f)
  for split in ("validation", "test"):
    for crops in ("center", "ten"):
      a, b = two["evaluations"][split][crops], one["evaluations"][split][crops]
      assert a["count"] == b["count"] == 30
      assert a["top1_error"] == b["top1_error"]
      np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
