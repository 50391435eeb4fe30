"""The ablation runner (alexnet_jax/ablate.py).

The study runs as the real command line in a process of its own (it sets
its own fake device count; helpers.run_module), on the smoke data set of the session fixture
`smoke_dirs` (tests/conftest.py).
"""

# pylint: disable=redefined-outer-name

import json
import math
import os

from PIL import Image
import pytest

from alexnet_jax import ablate
from alexnet_jax import ablation_report
from tests import helpers

SMOKE = "configs/demo.py:smoke"


def run_ablate(workdir, dirs, *flags):
  return helpers.run_module(
      "alexnet_jax.ablate",
      f"--config={SMOKE}",
      f"--workdir={workdir}",
      f"--config.data_dir={dirs[0]}",
      f"--config.manual_dir={dirs[1]}",
      *flags,
      timeout=600,
  )


@pytest.fixture(scope="module")
def smoke_study(smoke_dirs, tmp_path_factory):
  """The issue's smoke study, run once: (workdir, process)."""
  workdir = str(tmp_path_factory.mktemp("ablate"))
  proc = run_ablate(workdir, smoke_dirs, "--variants=paper,no_lrn", "--seeds=2")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return workdir, proc


def test_paired_difference_by_hand():
  paper = {0: 0.30, 1: 0.32, 2: 0.34, 3: 0.50}  # Seed 3: no pair.
  variant = {0: 0.33, 1: 0.33, 2: 0.37}
  d = ablation_report.paired_difference(variant, paper)
  # Differences 0.03, 0.01, 0.03: mean 0.07/3; deviations 1/300, -2/150,
  # 1/300; sample variance (1/90000 + 4/22500 + 1/90000) / 2 = 1/7500.
  mean, std = 0.07 / 3, math.sqrt(1 / 7500)
  half = 4.302652729911275 * std / math.sqrt(3)  # t_{0.975, 2 dof}.
  assert d["n"] == 3 and d["seeds"] == [0, 1, 2]
  assert d["mean"] == pytest.approx(mean)
  assert d["std"] == pytest.approx(std)
  assert d["ci95"] == pytest.approx([mean - half, mean + half])
  assert ablation_report.reading(d) == "within noise"  # [-0.0053, +0.0520].
  # One pair: a difference but no interval.
  one = ablation_report.paired_difference({0: 0.4}, {0: 0.3})
  assert one["mean"] == pytest.approx(0.1) and one["ci95"] is None
  assert ablation_report.reading(one).startswith("n/a")
  # Equal differences: a zero-width interval away from 0.
  same = ablation_report.paired_difference({0: 0.4, 1: 0.5}, {0: 0.3, 1: 0.4})
  assert same["ci95"] == pytest.approx([0.1, 0.1])
  assert ablation_report.reading(same) == "worse than paper"


def test_variant_config_arg():
  assert ablate.variant_config_arg(SMOKE, "paper") == SMOKE
  assert ablate.variant_config_arg(SMOKE, "no_lrn") == SMOKE + ",no_lrn"
  assert (
      ablate.variant_config_arg("configs/demo.py", "no_lrn+no_pca")
      == "configs/demo.py:no_lrn,no_pca"
  )


def test_claims_format():
  assert ablation_report.CLAIMS["no_lrn"].format() == "+1.4 / +1.2"
  assert ablation_report.CLAIMS["no_pca"].format() == "> +1 / n/a"
  assert ablation_report.CLAIMS["no_conv4"].format() == "~ +2 / n/a"
  assert ablation_report.CLAIMS["no_dropout"].format() == "no number"


def test_smoke_study_writes_outputs(smoke_study):
  workdir, proc = smoke_study
  # Its time is not asserted (a timed test fails on a loaded machine): it
  # is measured in the README's "Reproducing the paper".
  for i, (variant, seed) in enumerate(
      [("paper", 0), ("no_lrn", 0), ("paper", 1), ("no_lrn", 1)], 1
  ):
    assert f"[run {i}/4] {variant} seed {seed}" in proc.stdout
    assert os.path.exists(
        os.path.join(workdir, variant, f"seed{seed}", "results.json")
    )
  assert "ETA" in proc.stdout
  with open(os.path.join(workdir, "ablation.json")) as f:
    study = json.load(f)
  assert study["seeds"] == [0, 1] and study["split"] == "test"
  assert list(study["variants"]) == ["paper", "no_lrn"]
  no_lrn = study["variants"]["no_lrn"]
  assert no_lrn["config"] == SMOKE + ",no_lrn"
  assert no_lrn["claim"]["section"] == "§3.3"
  assert no_lrn["claim"]["top1"] == 1.4
  for key in (
      "top1_error_center",
      "top1_error_ten",
      "top5_error_center",
      "top5_error_ten",
  ):
    assert no_lrn["errors"][key]["n"] == 2
    diff = no_lrn["vs_paper"][key]
    assert diff["n"] == 2 and len(diff["ci95"]) == 2
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
  with open(os.path.join(workdir, "ablation.md")) as f:
    table = f.read()
  assert "| no_lrn | +1.4 / +1.2 (§3.3) |" in table
  assert table.strip() in proc.stdout  # Printed at the end.
  with Image.open(os.path.join(workdir, "ablation.png")) as image:
    assert image.format == "PNG" and image.size[0] > 400


def test_rerun_skips_finished_and_resumes_unfinished(smoke_study, smoke_dirs):
  workdir, _ = smoke_study
  results = {
      (v, s): os.path.join(workdir, v, f"seed{s}", "results.json")
      for v in ("paper", "no_lrn")
      for s in (0, 1)
  }
  mtimes = {k: os.stat(p).st_mtime_ns for k, p in results.items()}
  # An unfinished run: its checkpoints are there, its results are not.
  os.remove(results[("no_lrn", 1)])
  proc = run_ablate(workdir, smoke_dirs, "--variants=paper,no_lrn", "--seeds=2")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.count(": skipped, finished before") == 3
  assert "[run 4/4] no_lrn seed 1 (resuming in" in proc.stdout
  for key, path in results.items():
    if key != ("no_lrn", 1):
      assert os.stat(path).st_mtime_ns == mtimes[key], key
  assert os.path.exists(results[("no_lrn", 1)])


def test_unknown_variant_is_a_clean_error(tmp_path):
  proc = run_ablate(
      str(tmp_path),
      ("/nonexistent", "/nonexistent"),
      "--variants=paper,no_such_thing",
      "--seeds=1",
  )
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr
  assert "unknown variant 'no_such_thing'" in proc.stderr
  assert "known variants: paper, one_gpu, no_lrn" in proc.stderr
  assert not os.listdir(tmp_path)  # Nothing trained.
