"""The training program end to end on the generated mini data (CPU).

All runs share one generated + prepared copy of the `configs/demo.py:smoke`
data set and one complete run of the command line (the session fixtures
`smoke_dirs` and `uninterrupted` in conftest.py). What is about the process
is in test_resume.py (killed, preempted) and test_multiprocess.py (several
JAX processes); here the other command lines run as subprocesses and the
rest calls `train.train_and_evaluate` in this process.
"""

import json
import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import eval_lib
from alexnet_jax import figures
from alexnet_jax import parallel
from alexnet_jax import run_data
from alexnet_jax import train
from alexnet_jax import weights
from tests import helpers

smoke_config = helpers.smoke_config
final_params = helpers.final_params
run_main = helpers.run_main
scalars = helpers.scalars


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
  assert set(saved["baselines"]) == {
      "pixels_top1_error",
      "mean_color_top1_error",
      "chance_top1_error",
  }
  # The results table is printed at the end.
  assert "validation   ten" in results and "trivial baseline" in results
  # Figure 3: 2 towers x 4 kernels (smoke width), tower 0 above tower 1,
  # each under its label line.
  picture = np.asarray(Image.open(os.path.join(workdir, "conv1.png")))
  assert picture.shape == (
      2 * (11 * 4 + 1 + figures.LABEL_HEIGHT) + 8,
      4 * (11 * 4 + 1),
      3,
  )
  # Each tower's color share (Figure 3's split) is in results.json.
  shares = saved["conv1"]["tower_mean"]
  assert len(shares) == 2 and all(0.0 <= v <= 1.0 for v in shares)
  assert np.shape(saved["conv1"]["per_kernel"]) == (2, 4)
  assert any(
      name.startswith("events.out.tfevents") for name in os.listdir(workdir)
  )
  config = eval_lib.load_workdir_config(workdir)
  assert config.model.conv_features == (4, 8, 8, 8, 8)


def test_the_program_fits_its_training_set(smoke_dirs, tmp_path):
  """Learning through the real pipeline: the program fits the 80 images.

  The smoke run is too short to learn (its errors stay at chance), and 8
  images per class are too few to generalize to the validation split; so
  the check is the classic one: a model trained by the program, through the
  training input pipeline, classifies its own training images, read back by
  the evaluation pipeline, far better than chance (top-1/top-5 error 0.9/
  0.5, loss ln(10) = 2.30). 400 steps at a constant rate, no dropout, twice
  the smoke widths. Measured top-1/top-5 error and loss: 0.475/0.025/1.31
  (jax 0.10.2), 0.613/0.013/1.40 (jax 0.12.0.1); with the labels shuffled
  within each training batch: 0.9/0.5/2.30.
  """
  config = smoke_config(
      smoke_dirs,
      "smoke,no_dropout",
      num_epochs=80,
      eval_every_epochs=80,
      log_every_steps=100,
      checkpoint_every_steps=400,
  )
  config.optim.boundary_epochs = (80,)  # The rate never drops.
  config.model.update(conv_features=(8, 16, 24, 24, 16), fc_features=(64, 64))
  workdir = str(tmp_path / "fit")
  assert train.train_and_evaluate(config, workdir)["step"] == 400
  mesh = parallel.make_mesh(1, 2)
  params, _ = eval_lib.restore_params(workdir, config, mesh)
  data = run_data.Data(config, mesh)
  fit = eval_lib.evaluate(
      [(config, params)], mesh, data.eval_batches("train", "center")
  )
  assert fit["count"] == 80
  assert fit["top5_error"] < 0.2, fit
  assert fit["top1_error"] < 0.8, fit
  assert fit["loss"] < 1.8, fit


def test_neighbors_command_on_the_smoke_run(uninterrupted, tmp_path):
  """Figure 4 on the smoke run: the same numbers on 2x1 and 1x2 meshes."""
  workdir, _ = uninterrupted
  results = []
  for mesh_model in (1, 2):
    out = str(tmp_path / f"model{mesh_model}")
    proc = helpers.run_module(
        "alexnet_jax.neighbors",
        f"--workdir={workdir}",
        f"--output_dir={out}",
        f"--mesh_model={mesh_model}",
        "--show=4",
        timeout=600,
    )
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
      30,
      80,
      32,
  )
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
      {2: 0.02, 4: 0.02, 6: 0.002, 8: 0.002, 10: 0.002}
  )


def _plateau_config(smoke_dirs, num_epochs):
  """A rule that always sees a plateau: a drop at epoch 2, the stop at 4."""
  config = smoke_config(smoke_dirs, num_epochs=num_epochs, log_every_steps=1)
  config.optim.update(
      schedule="plateau",
      max_drops=1,
      patience_epochs=1,
      min_epochs_per_rate=1,
      min_improvement=1.0,
  )
  return config


def test_plateau_drops_are_logged_and_recorded_survive_a_resume_and_stop(
    smoke_dirs, tmp_path, caplog
):
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
    results = train.train_and_evaluate(_plateau_config(smoke_dirs, 5), workdir)
  assert "resumed from step 15" in caplog.text
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["learning_rate_drops"] == results["learning_rate_drops"]
  assert results["step"] == 20  # Stopped at epoch 4 of 5.
  (drop,) = results["learning_rate_drops"]
  assert drop == first["learning_rate_drops"][0]
  assert (drop["epoch"], drop["step"]) == (2.0, 10)
  assert drop["new_learning_rate"] == pytest.approx(0.002)  # 0.02 / 10.
  assert 0.0 <= drop["val_error"] <= 1.0
  assert drop["mean_error"] == drop["val_error"]  # A 1-epoch window.
  assert (
      results["plateau_stop"]["epoch"],
      results["plateau_stop"]["step"],
  ) == (4.0, 20)
  assert "plateau with all 1 drops done" in caplog.text
  # The rate of every step, both runs: 0.02 up to the drop, then 0.002.
  rates = scalars(workdir, "train/learning_rate")
  assert rates == pytest.approx(
      {s: 0.02 if s <= 10 else 0.002 for s in range(1, 21)}
  )


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    smoke_dirs, uninterrupted, tmp_path, caplog
):
  workdir = str(tmp_path / "nan")
  shutil.copytree(uninterrupted[0], workdir)  # Its last checkpoint: step 10.
  config = smoke_config(smoke_dirs, num_epochs=3, log_every_steps=1)
  config.optim.learning_rate = 1e30
  # Resumed at step 10: step 11 uses the rate (its loss is still finite),
  # step 12's loss is not.
  with (
      caplog.at_level(logging.INFO),
      pytest.raises(
          train.TrainingError,
          match=r"loss is (nan|inf) at step 12: .*step 10\) is kept",
      ),
  ):
    train.train_and_evaluate(config, workdir)
  assert "resumed from step 10" in caplog.text
  assert checkpoint.Checkpointer(workdir).latest_step() == 10


def test_evaluate_imported_npz_equals_its_checkpoint(
    smoke_dirs, uninterrupted, tmp_path
):
  """Exported weights, evaluated from the .npz, give the workdir's errors."""
  workdir = uninterrupted[0]
  config = smoke_config(smoke_dirs)
  params, _ = final_params(workdir, config)
  npz = tmp_path / "weights.npz"
  weights.export_npz(npz, params)
  output = tmp_path / "npz.json"
  proc = helpers.run_module(
      "alexnet_jax.evaluate",
      f"--npz={npz}",
      "--config=configs/demo.py:smoke",
      f"--config.data_dir={smoke_dirs[0]}",
      f"--config.manual_dir={smoke_dirs[1]}",
      "--config.cpu_devices=2",
      "--crops=center",
      f"--output={output}",
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  got = json.loads(output.read_text())["results"]["validation"]["center"]
  with open(os.path.join(workdir, "results.json")) as f:
    want = json.load(f)["evaluations"]["validation"]["center"]
  assert got["count"] == want["count"] == 30
  assert got["top1_error"] == want["top1_error"]
  assert got["top5_error"] == want["top5_error"]
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
