"""Every mistake a user can make: one clean message, exit 2, nothing lost.

Each case runs a real command line (`python -m alexnet_jax.main` or
`.evaluate`) and checks the exit status, that the
message names the offending thing, that no traceback is printed and that
nothing already in the workdir was changed. The cases run as forks of the
test process's fork server (helpers.start_module: the module run as
`python -m` runs it, without the interpreter's start and imports for each
case); two also run as a process of their own, started from nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import weights
from configs import demo
from tests import helpers

SMOKE = "--config=configs/demo.py:smoke"


def tree_digest(root: str) -> dict[str, str]:
  """Path -> sha256 of every file below `root`."""
  digest = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, root)] = hashlib.sha256(
            f.read()
        ).hexdigest()
  return digest


def make_workdir(root) -> str:
  """A workdir holding files of an earlier run that must survive."""
  path = root / "workdir"
  (path / "checkpoints" / "4").mkdir(parents=True)
  (path / "checkpoints" / "4" / "state.bin").write_bytes(b"\x00" * 64)
  (path / "results.json").write_text('{"step": 4}')
  (path / "config.json").write_text(demo.get_config("smoke").to_json())
  return str(path)


def npz_file(tmp_path, kind: str) -> str:
  """Weights for the smoke model, damaged in one way."""
  path = str(tmp_path / f"{kind}.npz")
  if kind == "not_npz":
    with open(path, "w") as f:
      f.write("not a zip archive")
    return path
  config = demo.get_config("smoke").model
  shapes = model_lib.param_shapes(config)
  arrays = weights.to_caffe_layout(
      jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  )
  if kind == "wrong_keys":
    arrays["fc9.weight"] = arrays.pop("fc8.weight")
  elif kind == "wrong_shape":
    arrays["conv2.weight"] = arrays["conv2.weight"][:, :-1]
  np.savez(path, **arrays)
  return path


# (name, module, arguments, what the message must contain). WORKDIR and NPZ
# are filled in per case.
CASES = [
    (
        "override typo",
        "main",
        [SMOKE, "--config.batch_szie=3"],
        ["--config.batch_szie=3", "batch_size"],
    ),
    (
        "override of the wrong type",
        "main",
        [SMOKE, "--config.batch_size=abc"],
        ["--config.batch_size=abc"],
    ),
    (
        "unknown config argument",
        "main",
        ["--config=configs/demo.py:smoke,no_such_switch"],
        ["no_such_switch", "known"],
    ),
    (
        "missing config file",
        "main",
        ["--config=configs/nothing.py"],
        ["configs/nothing.py"],
    ),
    ("no --config", "main", [], ["--config"]),
    ("unknown flag", "main", [SMOKE, "--wrokdir=x"], ["wrokdir"]),
    ("positional argument", "main", [SMOKE, "extra"], ["extra"]),
    (
        "evaluation every 0 epochs",
        "main",
        [SMOKE, "--config.eval_every_epochs=0"],
        ["eval_every_epochs=0"],
    ),
    (
        "negative batch",
        "main",
        [SMOKE, "--config.batch_size=-4"],
        ["batch_size=-4"],
    ),
    (
        "unknown schedule",
        "main",
        [SMOKE, "--config.optim.schedule=cosine"],
        ["optim.schedule='cosine'", "plateau"],
    ),
    (
        "boundaries not increasing",
        "main",
        [
            SMOKE,
            "--config.optim.schedule=steps",
            "--config.optim.boundary_epochs=(2,1)",
        ],
        ["optim.boundary_epochs"],
    ),
    (
        "repeated boundaries",
        "main",
        [
            SMOKE,
            "--config.optim.schedule=steps",
            "--config.optim.boundary_epochs=(1,1)",
        ],
        ["distinct"],
    ),
    (
        "plateau without a validation split",
        "main",
        [SMOKE, "--config.optim.schedule=plateau", "--config.eval_split="],
        ["eval_split", "optim.schedule=steps"],
    ),
    (
        "unknown crops",
        "main",
        [SMOKE, "--config.final_eval_crops=('five',)"],
        ["final_eval_crops", "center"],
    ),
    (
        "dropout rate 1",
        "main",
        [SMOKE, "--config.model.dropout_rate=1.0"],
        ["model.dropout_rate=1.0"],
    ),
    (
        "unknown dtype",
        "main",
        [SMOKE, "--config.model.dtype=float16"],
        ["model.dtype", "bfloat16"],
    ),
    (
        "impossible model axis",
        "main",
        [SMOKE, "--config.mesh.model=3"],
        ["mesh.model=3", "[1, 2]"],
    ),
    (
        "two towers on one CPU device",
        "main",
        [SMOKE, "--config.cpu_devices=1", "--config.mesh.data=-1"],
        ["mesh.data=-1", "--config.cpu_devices=2", "--config.mesh.model=1"],
    ),
    (
        "batch not divisible by the data axis",
        "main",
        [
            SMOKE,
            "--config.cpu_devices=4",
            "--config.mesh.data=2",
            "--config.batch_size=15",
        ],
        ["batch size 15", "mesh.data=2"],
    ),
    (
        "missing mean image file",
        "main",
        [SMOKE, "--config.mean_image_file=NOFILE"],
        [
            "mean_image_file=",
            "NOFILE",
            "--mean_out",
            "--config.mean_image_file=",
        ],
    ),
    (
        "workdir under a file",
        "main",
        [SMOKE, "--workdir=FILE/sub"],
        ["--workdir=", "cannot be created"],
    ),
    (
        "missing release files",
        "main",
        [
            "--config=configs/ilsvrc2010.py",
            "--config.cpu_devices=2",
            "--config.data_dir=EMPTY/tfds",
            "--config.manual_dir=EMPTY",
        ],
        ["ILSVRC2010_images_train.tar", "EMPTY"],
    ),
    (
        "evaluate: not a workdir",
        "evaluate",
        ["--workdir=EMPTY"],
        ["not a training workdir", "config.json"],
    ),
    ("evaluate: nothing to evaluate", "evaluate", [], ["--workdir", "--npz"]),
    (
        "evaluate: unknown crops",
        "evaluate",
        ["--workdir=WORKDIR", "--crops=five"],
        ["five"],
    ),
    (
        "evaluate: missing npz",
        "evaluate",
        [SMOKE, "--npz=NOFILE"],
        ["no such file"],
    ),
    (
        "evaluate: npz with wrong keys",
        "evaluate",
        [SMOKE, "--npz=wrong_keys"],
        ["fc9.weight"],
    ),
    (
        "evaluate: npz with a wrong shape",
        "evaluate",
        [SMOKE, "--npz=wrong_shape"],
        ["conv2"],
    ),
    (
        "evaluate: not an npz",
        "evaluate",
        [SMOKE, "--npz=not_npz"],
        ["not a readable .npz"],
    ),
    # SMOKE_DATA: the session's prepared smoke data (8 training images per
    # class) read by a config whose generator makes 9.
    (
        "data_dir prepared from other generator parameters",
        "main",
        [
            SMOKE,
            "--config.data_dir=SMOKE_DATA",
            "--config.mini.train_per_class=9",
            "--config.manual_dir=EMPTY/manual",
        ],
        ["--config.data_dir=", "train split has 80 images", "makes 90"],
    ),
    # TRAINED: a copy of the trained smoke workdir (conftest.uninterrupted);
    # DAMAGED: the same copy, its latest checkpoint's largest files cut in
    # half after it was written.
    (
        "checkpoint of another model",
        "main",
        [SMOKE, "--workdir=TRAINED", "--config.model.fc_features=(32,32)"],
        ["different model", "TRAINED"],
    ),
    (
        "checkpoint damaged after it was written",
        "main",
        [SMOKE, "--workdir=DAMAGED"],
        ["step 10", "DAMAGED", "damaged"],
    ),
]


def trained_workdir(request, root, damaged: bool) -> tuple[str, list]:
  """A copy of the trained smoke workdir; the flags that read its data."""
  smoke_dirs = request.getfixturevalue("smoke_dirs")
  source = request.getfixturevalue("uninterrupted")[0]
  path = str(root / ("damaged" if damaged else "trained"))
  shutil.copytree(source, path)  # Never change the shared one.
  if damaged:
    step_dir = os.path.join(path, "checkpoints", "10")
    files = sorted(
        (os.path.getsize(os.path.join(d, f)), os.path.join(d, f))
        for d, _, names in os.walk(step_dir)
        for f in names
    )
    for size, file in files[-3:]:
      os.truncate(file, size // 2)
  return path, [
      f"--config.data_dir={smoke_dirs[0]}",
      f"--config.manual_dir={smoke_dirs[1]}",
  ]


def prepare(request, root, module, args):
  """A case's files under `root` and its command line:
  (arguments, the workdir that must not change, placeholder -> value)."""
  (root / "a_file").write_text("")
  (root / "empty").mkdir()
  workdir = make_workdir(root)
  fill = {
      "WORKDIR": workdir,
      "FILE": str(root / "a_file"),
      "EMPTY": str(root / "empty"),
      "NOFILE": str(root / "none.npz"),
  }
  args = list(args)
  if "--config.data_dir=SMOKE_DATA" in args:
    fill["SMOKE_DATA"] = request.getfixturevalue("smoke_dirs")[0]
  for key in ("TRAINED", "DAMAGED"):
    if f"--workdir={key}" in args:
      fill[key], data_flags = trained_workdir(request, root, key == "DAMAGED")
      workdir = fill[key]
      args += data_flags
  for i, arg in enumerate(args):
    if arg.startswith("--npz=") and arg[6:] in (
        "wrong_keys",
        "wrong_shape",
        "not_npz",
    ):
      args[i] = "--npz=" + npz_file(root, arg[6:])
    for key, value in fill.items():
      args[i] = args[i].replace(f"={key}", f"={value}")
  if module == "main" and not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={workdir}")
  return args, workdir, fill


def check(status, stderr, needles, fill):
  assert status == 2, stderr
  assert "Traceback" not in stderr, stderr
  # The message: from the last line that starts with "error: " to the end
  # (a list of missing files spans several lines).
  assert "\nerror: " in "\n" + stderr, stderr
  message = stderr[stderr.rfind("error: ") :]
  for needle in needles:
    assert fill.get(needle, needle) in message, (needle, stderr)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
  """Every case run: name -> (exit status, stderr, fill, workdir digests
  before and after)."""
  cases = {}
  for n, (name, module, args, _) in enumerate(CASES):
    root = tmp_path_factory.mktemp(f"case{n}")
    args, workdir, fill = prepare(request, root, module, args)
    out, err = str(root / "stdout.txt"), str(root / "stderr.txt")
    cases[name] = (module, args, out, err, workdir, fill, tree_digest(workdir))
  statuses = {}
  for name, (module, args, out, err, *_) in cases.items():
    command = helpers.start_module(
        f"alexnet_jax.{module}", *args, stdout=out, stderr=err
    )
    statuses[name] = command.wait(timeout=600)
  return {
      name: (
          statuses[name],
          helpers.read(err),
          fill,
          before,
          tree_digest(workdir),
      )
      for name, (_, _, _, err, workdir, fill, before) in cases.items()
  }


@pytest.mark.parametrize(
    "name,needles", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_user_error(outcomes, name, needles):
  status, stderr, fill, before, after = outcomes[name]
  check(status, stderr, needles, fill)
  assert after == before


# Also as a process of its own, started from nothing (each forked case is a
# process too: its exit status and stderr are its own).
OWN_PROCESS = ("override typo", "unknown dtype")


@pytest.mark.parametrize("name", OWN_PROCESS)
def test_user_error_in_a_new_process(request, tmp_path, name):
  _, module, args, needles = next(c for c in CASES if c[0] == name)
  args, workdir, fill = prepare(request, tmp_path, module, args)
  before = tree_digest(workdir)
  proc = helpers.run_new_process(f"alexnet_jax.{module}", *args, timeout=600)
  check(proc.returncode, proc.stderr, needles, fill)
  assert tree_digest(workdir) == before
