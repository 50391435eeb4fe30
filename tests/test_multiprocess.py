"""The training program as several JAX processes on loopback.

Real multi-process JAX (jax.distributed over loopback, gloo collectives):
two processes of the command line, one fake CPU device each, on the
`configs/demo.py:smoke` data (the session fixtures in conftest.py), compared
with one process. Output goes to files, never to undrained pipes.
"""

import json
import os
import socket
import time

import jax
import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax import train
from tests import helpers


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
  procs = [
      helpers.start_main(
          smoke_dirs,
          workdir,
          "--config.cpu_devices=1",
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={i}",
          *flags,
          log=logs[i],
      )
      for i in range(2)
  ]
  return procs, logs


def test_two_processes_on_loopback_match_one_process(
    smoke_dirs, uninterrupted, tmp_path
):
  """Two JAX processes, one CPU device each, form the 2-tower mesh.

  Real multi-process JAX (jax.distributed over loopback, gloo collectives):
  each process holds one tower; both read the same batches (they hold the
  same data row). The result matches the single-process run.
  """
  workdir = str(tmp_path / "two_processes")
  outputs = _wait_all(*_start_two_processes(smoke_dirs, workdir, tmp_path))
  assert "process 0 of 2" in outputs[0] and "process 1 of 2" in outputs[1]
  config = helpers.smoke_config(smoke_dirs)
  got, step = helpers.final_params(workdir, config)
  expected, _ = helpers.final_params(uninterrupted[0], config)
  assert step == 10
  # Other compiled programs (cross-process collectives): equal up to float
  # rounding, far below what one different batch or mask would change.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
      got,
      expected,
  )


def test_two_processes_reading_different_data_match_one_process(
    smoke_dirs, tmp_path, monkeypatch
):
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
    parts = [
        make_train_dataset(
            builder, **dict(kwargs, process_index=i, process_count=2)
        )
        for i in range(2)
    ]
    return tf.data.Dataset.zip(tuple(parts)).map(
        lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a}
    )

  monkeypatch.setattr(input_pipeline, "make_train_dataset", two_processes_data)
  one_workdir = str(tmp_path / "one_process")
  config = helpers.smoke_config(smoke_dirs)
  config.mesh.update(data=2, model=1)
  one = train.train_and_evaluate(config, one_workdir)
  outputs = _wait_all(procs, logs)
  assert "process 1 of 2" in outputs[1]
  got, step = helpers.final_params(workdir, config)
  expected, _ = helpers.final_params(one_workdir, config)
  assert step == one["step"] == 10
  # Other compiled programs (cross-process collectives): equal up to float
  # rounding, far below what one different example would change.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
      got,
      expected,
  )
  with open(os.path.join(workdir, "results.json")) as f:
    two = json.load(f)
  for split in ("validation", "test"):
    for crops in ("center", "ten"):
      a, b = two["evaluations"][split][crops], one["evaluations"][split][crops]
      assert a["count"] == b["count"] == 30
      assert a["top1_error"] == b["top1_error"]
      np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
