"""The README's Python example runs as written."""

import os
import re

from tests import helpers


def test_readme_python_example_runs(tmp_path):
  with open(os.path.join(helpers.REPO_ROOT, "README.md")) as f:
    readme = f.read()
  section = readme.split("## Use the model from Python", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  code = code.replace("/tmp/alexnet_tiny.npz", str(tmp_path / "w.npz"))
  proc = helpers.run_code(code, num_devices=2)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "P('model', None, None, None, None)" in proc.stdout
  assert "'loss'" in proc.stdout
