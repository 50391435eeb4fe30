"""The repository's Python is formatted as pyproject.toml says (pyink)."""

import subprocess
import sys

from tests import helpers


def test_code_is_formatted():
  proc = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "--diff", "."],
      cwd=helpers.REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, (
      "Run `pyink .` to format:\n" + proc.stdout[-5000:] + proc.stderr[-2000:]
  )
