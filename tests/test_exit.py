"""The training command line ends promptly once its work is done.

train.py closes the endless training stream when its loop ends, so that no
tf.data iterator is left to interpreter teardown, where TensorFlow's
destructor can wait forever for its threads; main.py then ends like any
Python program. Checked on the session's complete run of the real command
line (`uninterrupted` in conftest.py, which notes when its process ended).
"""

from __future__ import annotations

import os

# Seconds from results.json (the last file the run writes) to the end of the
# process: about 3 s on this project's 2 shared CPU cores (interpreter and
# JAX backend teardown). A stall waits forever (helpers.run_main gives up
# after 600 s).
EXIT_SECONDS = 30


def test_main_exits_promptly_after_its_results(uninterrupted):
  workdir, log = uninterrupted
  seconds = os.path.getmtime(workdir + ".ended") - os.path.getmtime(
      os.path.join(workdir, "results.json")
  )
  assert 0 <= seconds < EXIT_SECONDS, seconds
  assert "test         ten" in log  # The summary was printed.
