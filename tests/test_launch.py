"""Tests of launch/: the TPU VM launcher (dry runs) and the Colab notebook.

The launcher is run with --dry-run, under a fake `gcloud` that fails if it
is ever called, so these tests need neither gcloud nor a network. One test
also runs it for real against a fake `gcloud` that only logs its arguments.
The notebook test executes launch/colab.ipynb in a real Jupyter kernel with
the tiny `configs/demo.py:smoke` config.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess

import pytest

from tests import helpers

SCRIPT = os.path.join(helpers.REPO_ROOT, "launch", "tpu_vm.sh")
NOTEBOOK = os.path.join(helpers.REPO_ROOT, "launch", "colab.ipynb")

REQUIRED = dict(
    name="alexnet-test",
    zone="us-central2-b",
    accelerator="v4-8",
    data_dir="gs://my-bucket/tfds",
    workdir="gs://my-bucket/workdirs/run1",
)
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
ON_ALL = ["--zone=us-central2-b", "--worker=all"]
TRAIN = (
    "cd alexnet_jax && ~/alexnet_jax_venv/bin/python -m alexnet_jax.main"
    " --config=configs/ilsvrc2010.py"
    " --workdir=gs://my-bucket/workdirs/run1"
    " --config.data_dir=gs://my-bucket/tfds --multihost"
)

FAKE_GCLOUD = """#!/usr/bin/env bash
# Logs its arguments (one shell-quoted line per call) to $GCLOUD_LOG.
printf '%q ' gcloud "$@" >> "$GCLOUD_LOG"
echo >> "$GCLOUD_LOG"
case "$*" in
  *"${GCLOUD_FAIL_ON:-@never@}"*) exit 3 ;;
esac
"""


def flags(**overrides) -> list[str]:
  values = {**REQUIRED, **overrides}
  return [f"--{k}={v}" for k, v in values.items() if v is not None]


@pytest.fixture
def fake_gcloud(tmp_path):
  """A PATH whose `gcloud` logs its calls; returns (env, log path)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  log = tmp_path / "gcloud.log"
  env = dict(
      os.environ,
      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
      GCLOUD_LOG=str(log),
  )
  return env, log


def run_script(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
  return subprocess.run(
      ["bash", SCRIPT, *args],
      capture_output=True,
      text=True,
      env=env,
      timeout=60,
      cwd="/",
  )


def dry_run(args: list[str], fake_gcloud) -> list[list[str]]:
  """The commands a dry run prints, each as an argv list."""
  env, log = fake_gcloud
  proc = run_script([*args, "--dry-run"], env)
  assert proc.returncode == 0, proc.stderr
  assert not log.exists(), "a dry run called gcloud"
  lines = proc.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), lines
  return [shlex.split(line[2:]) for line in lines]


def logged_calls(log) -> list[list[str]]:
  """The fake gcloud's calls, each as an argv list."""
  return [shlex.split(line) for line in log.read_text().splitlines()]


def ssh_all(command: str) -> list[str]:
  return [*TPU, "ssh", "alexnet-test", *ON_ALL, f"--command={command}"]


def test_script_syntax():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed"
)
def test_shellcheck():
  proc = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_help(fake_gcloud):
  proc = run_script(["--help"], fake_gcloud[0])
  assert proc.returncode == 0
  assert "--accelerator" in proc.stdout and "--dry-run" in proc.stdout


def test_dry_run_commands(fake_gcloud):
  commands = dry_run(flags(), fake_gcloud)
  # What gets copied: the package, its configs and its build files, not the
  # local virtual environment, data or workdirs.
  copied = ["pyproject.toml", "setup.cfg"]
  copied += [
      f
      for f in ("README.md", "LICENSE")
      if os.path.exists(os.path.join(helpers.REPO_ROOT, f))
  ]
  copied += ["alexnet_jax", "configs"]
  assert commands[:3] == [
      [
          *TPU,
          "create",
          "alexnet-test",
          "--zone=us-central2-b",
          "--accelerator-type=v4-8",
          "--version=tpu-ubuntu2204-base",
      ],
      ssh_all("mkdir -p alexnet_jax"),
      [*TPU, "scp", "--recurse", *copied, "alexnet-test:alexnet_jax/", *ON_ALL],
  ]
  install = commands[3]
  assert install[:-1] == ssh_all("")[:-1]
  assert install[-1].startswith("--command=set -e; cd alexnet_jax;")
  assert install[-1].endswith(
      '~/alexnet_jax_venv/bin/pip install -e ".[data]" "jax[tpu]"'
  )
  assert commands[4:] == [
      ssh_all(TRAIN),
      [*TPU, "delete", "alexnet-test", "--zone=us-central2-b", "--quiet"],
  ]


def test_install_command_is_valid_shell(fake_gcloud):
  install = dry_run(flags(), fake_gcloud)[3][-1]
  subprocess.run(
      ["bash", "-n", "-c", install.removeprefix("--command=")], check=True
  )


def test_keep_repo_config_extra(fake_gcloud):
  commands = dry_run(
      flags(
          config="configs/ilsvrc2012.py:bf16",
          accelerator="v5p-8",
          repo="https://example.com/alexnet_jax.git",
          branch="v1",
      )
      + ["--keep", "--extra", "--config.num_epochs=1 --config.batch_size=256"],
      fake_gcloud,
  )
  assert [c[4] for c in commands] == ["create", "ssh", "ssh", "ssh"]
  assert commands[0][-1] == "--version=v2-alpha-tpuv5"
  assert commands[1] == ssh_all(
      "git clone --depth=1 --branch=v1 https://example.com/alexnet_jax.git"
      " alexnet_jax"
  )
  assert commands[3] == ssh_all(
      TRAIN.replace("ilsvrc2010.py", "ilsvrc2012.py:bf16")
      + " --config.num_epochs=1 --config.batch_size=256"
  )


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_missing_required_flag(missing, fake_gcloud):
  env, log = fake_gcloud
  proc = run_script([*flags(**{missing: None}), "--dry-run"], env)
  assert proc.returncode != 0
  assert f"--{missing}" in proc.stderr
  assert not proc.stdout and not log.exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(workdir="/tmp/run1"), "--workdir must be a gs:// path"),
        (dict(data_dir="data/tfds"), "--data_dir must be a gs:// path"),
        (dict(accelerator="v9-8"), "pass --version"),
        (dict(config="configs/nope.py"), "no file configs/nope.py"),
    ],
)
def test_bad_flags(bad, message, fake_gcloud):
  proc = run_script([*flags(**bad), "--dry-run"], fake_gcloud[0])
  assert proc.returncode != 0 and message in proc.stderr


def test_real_run_matches_dry_run_and_deletes_on_failure(fake_gcloud):
  env, log = fake_gcloud
  expected = dry_run(flags(), fake_gcloud)
  proc = run_script(flags(), env)
  assert proc.returncode == 0, proc.stderr
  assert logged_calls(log) == expected
  # Training fails: the VM is still deleted and the failure reported.
  log.unlink()
  env = dict(env, GCLOUD_FAIL_ON="alexnet_jax.main")
  proc = run_script(flags(), env)
  assert proc.returncode == 3
  assert logged_calls(log) == expected


# =============================================================================
# The Colab notebook.
# =============================================================================


def _parameters_cell_index(nb) -> int:
  (index,) = [
      i
      for i, c in enumerate(nb.cells)
      if "parameters" in c.metadata.get("tags", [])
  ]
  return index


def test_notebook_is_valid_with_parameter_cell():
  import nbformat  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  params = nb.cells[_parameters_cell_index(nb)].source
  for name in ("CONFIG", "WORKDIR", "DATA_DIR", "RUN_IMAGENETTE"):
    assert f"\n{name} = " in "\n" + params
  assert 'CONFIG = "configs/demo.py"' in params
  assert "RUN_IMAGENETTE = False" in params
  # The Imagenette run (a download) only happens when asked for.
  (imagenette,) = [
      c.source
      for c in nb.cells
      if "configs/imagenette.py" in c.source and c.cell_type == "code"
  ]
  assert imagenette.startswith("if RUN_IMAGENETTE:")
  # Committed without outputs.
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_demo(tmp_path):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "workdir"
  overrides = "\n".join(
      [
          'CONFIG = "configs/demo.py:smoke"',
          f"WORKDIR = {str(workdir)!r}",
          f"DATA_DIR = {str(tmp_path / 'tfds')!r}",
          f"MANUAL_DIR = {str(tmp_path / 'manual')!r}",
      ]
  )
  nb.cells.insert(
      _parameters_cell_index(nb) + 1, nbformat.v4.new_code_cell(overrides)
  )
  env = dict(helpers.command_env(), ALEXNET_JAX_SKIP_INSTALL="1")
  # The kernel runs this interpreter (jupyter_client maps the kernel spec's
  # "python" to sys.executable), in the repository root like a checkout.
  client = nbclient.NotebookClient(
      nb,
      timeout=600,
      kernel_name="python3",
      resources={"metadata": {"path": helpers.REPO_ROOT}},
  )
  client.execute(env=env)

  assert (workdir / "results.json").is_file()
  outputs = [
      o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  ]
  text = "".join(o.get("text", "") for o in outputs)
  assert "Runtime: cpu" in text
  assert "skipping the install" in text
  assert "Imagenette skipped" in text
  markdown = [
      o["data"]["text/markdown"]
      for o in outputs
      if "text/markdown" in o.get("data", {})
  ]
  assert any(m.startswith("| split | crops |") for m in markdown), markdown
  # conv1.png, written by the training program, is shown.
  assert (workdir / "conv1.png").is_file()
  assert any("image/png" in o.get("data", {}) for o in outputs)


def _notebook_function(name: str):
  """A function defined in the notebook's code cells, run from the repo."""
  import nbformat  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  (node,) = [
      n
      for n in ast.parse(code).body
      if isinstance(n, ast.FunctionDef) and n.name == name
  ]
  namespace = {}
  exec(
      "import configparser, importlib.metadata\n"  # pylint: disable=exec-used
      "from packaging import requirements\n" + ast.unparse(node),
      namespace,
  )
  return namespace[name]


@pytest.mark.parametrize(
    "have,runtime,expected",
    [
        # Colab's JAX in the supported range is kept, with its own plugin.
        ("0.12.0.1", "gpu", "jax[cuda12]==0.12.0.1"),
        ("0.10.2", "tpu", "jax[tpu]==0.10.2"),
        ("0.11.1", "cpu", "jax==0.11.1"),
        # No JAX yet: the package's own requirement decides (None: nothing to add
        # on CPU); outside the range: a supported one.
        (None, "cpu", None),
        (None, "tpu", "jax[tpu]{spec}"),
        ("0.4.30", "gpu", "jax[cuda12]{spec}"),
    ],
)
def test_notebook_keeps_the_runtimes_jax(monkeypatch, have, runtime, expected):
  import configparser  # pylint: disable=g-import-not-at-top
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  from packaging import requirements  # pylint: disable=g-import-not-at-top

  def version(name):
    if have is None:
      raise importlib.metadata.PackageNotFoundError(name)
    return have

  monkeypatch.setattr(importlib.metadata, "version", version)
  monkeypatch.chdir(helpers.REPO_ROOT)
  setup = configparser.ConfigParser()
  setup.read("setup.cfg")
  (spec,) = [
      str(requirements.Requirement(r).specifier)
      for r in setup["options"]["install_requires"].split("\n")
      if r.strip().startswith("jax")
  ]
  got = _notebook_function("jax_requirement")(runtime)
  assert got == (expected and expected.format(spec=spec))
