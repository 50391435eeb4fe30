"""The training program as a process: killed, preempted, resumed.

Real command lines (`alexnet_jax.main`, `alexnet_jax.evaluate`) on the
`configs/demo.py:smoke` data (the session fixtures `smoke_dirs` and
`uninterrupted` in conftest.py), checked against the uninterrupted run.
Output goes to files, never to undrained pipes.
"""

import json
import signal

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint
from tests import helpers


def test_killed_and_resumed_equals_uninterrupted(
    smoke_dirs, uninterrupted, tmp_path
):
  """SIGKILL after the first checkpoint, rerun: resumes, same parameters."""
  workdir = str(tmp_path / "killed")
  log = str(tmp_path / "killed.log")
  proc = helpers.start_main(smoke_dirs, workdir, log=log)
  try:
    helpers.wait_for_checkpoint(workdir, proc, log)
  finally:
    proc.kill()  # SIGKILL: no chance to save anything more.
    proc.wait()
  killed_at = checkpoint.Checkpointer(workdir).latest_step()
  assert killed_at is not None and 0 < killed_at < 10
  out = helpers.run_main(
      smoke_dirs, workdir
  ).stdout  # The same command resumes.
  # ... from the killed step, not from step 0 (the smoke run is
  # deterministic: a restart would end with the same bits).
  assert f"resumed from step {killed_at} in " in out, out
  assert f"training steps {killed_at}..10 " in out, out
  config = helpers.smoke_config(smoke_dirs)
  resumed, step = helpers.final_params(workdir, config)
  expected, expected_step = helpers.final_params(uninterrupted[0], config)
  assert step == expected_step == 10
  # Bit-identical: same data, dropout masks, momentum and schedule.
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)
  # The rates after the resume follow the schedule too.
  rates = helpers.scalars(workdir, "train/learning_rate")
  want = helpers.scalars(uninterrupted[0], "train/learning_rate")
  assert {s: v for s, v in rates.items() if s > killed_at} == pytest.approx(
      {s: v for s, v in want.items() if s > killed_at}
  )


def test_sigterm_saves_and_restores_on_another_mesh_and_ensembles(
    smoke_dirs, uninterrupted, tmp_path
):
  workdir = str(tmp_path / "sigterm")
  log = str(tmp_path / "sigterm.log")
  proc = helpers.start_main(
      smoke_dirs, workdir, "--config.num_epochs=200", log=log
  )
  try:
    helpers.wait_for_checkpoint(workdir, proc, log)
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
  proc = helpers.run_module(
      "alexnet_jax.evaluate",
      f"--workdir={uninterrupted[0]}",
      f"--workdir={workdir}",
      "--mesh_data=1",
      "--mesh_model=1",
      "--crops=center,ten",
      f"--output={output}",
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  results = json.loads(output.read_text())["results"]["validation"]
  assert results["center"]["count"] == results["ten"]["count"] == 30
  assert "ten" in proc.stdout
