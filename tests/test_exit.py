"""The training command line ends promptly once its work is done.

train.py closes the endless training stream when its loop ends, so that no
tf.data iterator is left to interpreter teardown, where TensorFlow's
destructor can wait forever for its threads; main.py then ends like any
Python program. This runs the real command line on the smoke data
(`smoke_dirs` in conftest.py) and times its end.
"""

from __future__ import annotations

import os
import subprocess
import time

from tests import helpers

# Seconds from results.json (the last file the run writes) to the end of the
# process: about 3 s on this project's 2 shared CPU cores (interpreter and
# JAX backend teardown). A stall waits forever.
EXIT_SECONDS = 30


def test_main_exits_promptly_after_its_results(smoke_dirs, tmp_path):
  workdir = str(tmp_path / "run")
  log = str(tmp_path / "run.log")
  results = os.path.join(workdir, "results.json")
  proc = helpers.start_main(smoke_dirs, workdir, log=log)
  try:
    deadline = time.time() + 600
    while not os.path.exists(results) and proc.poll() is None:
      assert time.time() < deadline, helpers.read(log)
      time.sleep(0.2)
    try:
      proc.wait(timeout=EXIT_SECONDS)
    except subprocess.TimeoutExpired:
      raise AssertionError(
          f"still running {EXIT_SECONDS} s after writing results.json:\n"
          + helpers.read(log)
      ) from None
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, helpers.read(log)
  seconds = time.time() - os.path.getmtime(results)
  assert seconds < EXIT_SECONDS, seconds
  assert "test         ten" in helpers.read(log)  # The summary was printed.
