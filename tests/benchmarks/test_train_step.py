"""The train-step benchmark (benchmarks/train_step.py) on the tiny model.

Figures are not checked (the machine is shared); what is checked is that
the report is complete, and that its analytic FLOPs and the collective
bytes it reads from the compiled HLO are exactly right.
"""

import json
import subprocess
import sys

import pytest

from benchmarks import report as report_lib
from benchmarks import train_step
from tests import helpers


@pytest.fixture(scope="module")
def report():
  return train_step.run(
      helpers.tiny_config(),
      batch_sizes=(4, 8),
      meshes="1x1,1x2",
      dtypes=("float32",),
      steps=2,
      warmup=1,
      matmul_size=256,
      log=lambda *_: None,
  )


def test_report_is_complete_json(report):
  report = json.loads(json.dumps(report, default=float))
  assert report["backend"] == "cpu"
  assert report["num_params"] == 18_090
  assert [
      (r["mesh"], r["devices"], r["dtype"], r["batch_size"])
      for r in report["results"]
  ] == [
      ("1x1", 1, "float32", 4),
      ("1x1", 1, "float32", 8),
      ("1x2", 2, "float32", 4),
      ("1x2", 2, "float32", 8),
  ]
  # The sweep names the fastest batch of each mesh.
  assert [(b["mesh"], b["batch_sizes"]) for b in report["best_batch"]] == [
      ("1x1", [4, 8]),
      ("1x2", [4, 8]),
  ]
  for best in report["best_batch"]:
    assert best["images_per_s"] == max(
        r["images_per_s"]
        for r in report["results"]
        if r["mesh"] == best["mesh"]
    )
  for r in report["results"]:
    for key in (
        "images_per_s",
        "images_per_cpu_s",
        "lower_s",
        "compile_s",
        "achieved_flops_per_s",
        "peak_flops_per_s",
        "mfu",
        "xla_train_flops_per_image",
        "xla_forward_flops_per_image",
    ):
      assert r[key] > 0, (r["mesh"], key, r[key])
    assert len(r["step_s"]) == 2
    # XLA counts the convolutions and matmuls without the taps on padding,
    # plus elementwise work (bias, ReLU, LRN, pooling).
    xla = r["xla_forward_flops_per_image"]
    unpadded = report["analytic_flops"][
        "forward_flops_per_image_without_padding"
    ]
    assert unpadded <= xla <= 1.1 * unpadded, (xla, unpadded)
    assert r["memory"]["peak_device_bytes"] is None  # CPU: not reported.
    assert r["memory"]["compiled_bytes_per_device"] > 0
  table = report_lib.format_report(report)
  assert "1x2" in table and "2,792,516" in table


def test_collective_bytes_from_hlo_equal_the_analytic_minimum(report):
  """Bytes each device sends per step, batch 4, float32, tiny sizes."""
  one, two = (r for r in report["results"] if r["batch_size"] == 4)
  # Both towers on one device: nothing crosses devices (XLA keeps a psum
  # over the size-1 data axis; its one-device groups send nothing).
  assert one["collective_bytes_sent_per_device"]["total"] == 0
  # 1 x 2, per image: conv3 all-gather sends own pool2 5x5x8, fc6
  # reduce-scatter 16, fc7 all-gather 16, fc8 all-reduce (n=2) 10 values;
  # backward: the first three again (fc8's sum needs none).
  forward = 4 * (5 * 5 * 8 + 16 + 16 + 10) * 4
  backward = 4 * (5 * 5 * 8 + 16 + 16) * 4
  expected = {
      "model_forward": forward,
      "model_backward": backward,
      "data": 0.0,
      "total": forward + backward,
  }
  assert two["analytic_collective_bytes_per_device"] == expected
  assert two["collective_bytes_sent_per_device"] == expected
  assert sorted(
      (c["phase"], c["op"], c["types"][0])
      for c in two["collectives"]
      if c["sent_bytes"]
  ) == [
      ("backward", "all-gather", "f32[4,32]"),
      ("backward", "reduce-scatter", "f32[4,16]"),
      ("backward", "reduce-scatter", "f32[4,5,5,8]"),
      ("forward", "all-gather", "f32[4,32]"),
      ("forward", "all-gather", "f32[4,5,5,16]"),
      ("forward", "all-reduce", "f32[4,10]"),
      ("forward", "reduce-scatter", "f32[4,16]"),
  ]


def test_mesh_shapes():
  assert train_step.mesh_shapes("auto", 1, 2, 128) == [(1, 1)]
  assert train_step.mesh_shapes("auto", 2, 2, 128) == [(1, 1), (1, 2), (2, 1)]
  assert train_step.mesh_shapes("auto", 4, 2, 128) == [
      (1, 1),
      (1, 2),
      (2, 1),
      (2, 2),
      (4, 1),
  ]
  assert train_step.mesh_shapes("auto", 2, 1, 128) == [(1, 1), (2, 1)]
  assert train_step.mesh_shapes("1x2, 2x2", 4, 2, 128) == [(1, 2), (2, 2)]
  assert train_step.mesh_shapes("none", 4, 2, 128) == []


def test_model_benchmark_does_not_import_tensorflow():
  code = (
      "import sys, benchmarks.train_step; "
      "assert 'tensorflow' not in sys.modules"
  )
  subprocess.run(
      [sys.executable, "-c", code],
      cwd=helpers.REPO_ROOT,
      check=True,
      timeout=120,
  )


def test_best_batch_skips_batches_that_did_not_fit():
  results = [
      dict(mesh="1x1", dtype="bfloat16", batch_size=128, images_per_s=10.0),
      dict(mesh="1x1", dtype="bfloat16", batch_size=512, images_per_s=30.0),
      dict(
          mesh="1x1",
          dtype="bfloat16",
          batch_size=4096,
          error="out of device memory",
      ),
      dict(mesh="1x2", dtype="bfloat16", batch_size=128, images_per_s=5.0),
  ]
  assert report_lib.best_batches(results) == [
      dict(
          mesh="1x1",
          dtype="bfloat16",
          batch_size=512,
          images_per_s=30.0,
          batch_sizes=[128, 512],
      )
  ]
  assert "out of device memory" in report_lib.format_row(results[2])


def test_bad_batch_size_flag_is_a_usage_error():
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "benchmarks.train_step",
          "--batch_size=128,x",
          "--meshes=none",
      ],
      cwd=helpers.REPO_ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode != 0
  assert "--batch_size=128,x: give positive integers" in result.stderr


def test_interleaved_cases_run_the_same_steps(report):
  """--interleave: same cases and the same training as one after another."""
  interleaved = train_step.run(
      helpers.tiny_config(),
      batch_sizes=(4,),
      meshes="1x1,1x2",
      dtypes=("float32",),
      steps=2,
      warmup=1,
      matmul_size=256,
      interleave=True,
      log=lambda *_: None,
  )
  apart = {r["mesh"]: r for r in report["results"] if r["batch_size"] == 4}
  assert [r["mesh"] for r in interleaved["results"]] == ["1x1", "1x2"]
  assert interleaved["results"][0]["speed_vs_first_case"] == 1.0
  assert "speed relative to 1x1 float32" in report_lib.format_report(
      interleaved
  )
  for r in interleaved["results"]:
    assert len(r["step_s"]) == 2 and r["images_per_s"] > 0
    assert r["speed_vs_first_case"] > 0
    assert r["final_loss"] == pytest.approx(
        apart[r["mesh"]]["final_loss"], rel=1e-6
    )
    assert (
        r["collective_bytes_sent_per_device"]
        == apart[r["mesh"]]["collective_bytes_sent_per_device"]
    )


def test_profile_accounts_for_the_time_outside_op_events(tmp_path):
  """`--profile`: the time in ops' trace events plus the time outside them
  (XLA:CPU's Eigen convolutions run there) is the wall time x CPUs, and the
  report prints both."""
  profiled = train_step.run(
      helpers.tiny_config(),
      batch_sizes=(4,),
      meshes="1x1",
      steps=1,
      warmup=1,
      matmul_size=256,
      profile_dir=str(tmp_path),
      log=lambda *_: None,
  )
  p = profiled["results"][0]["profile"]
  assert p["busy_s_per_step"] > 0 and p["outside_ops_s_per_step"] > 0
  assert p["busy_s_per_step"] + p["outside_ops_s_per_step"] == pytest.approx(
      p["wall_s_per_step"] * p["cpus"]
  )
  assert "conv conv1 fwd" in p["busy_s_by_group"]
  text = report_lib.format_report(profiled)
  assert f"{p['outside_ops_s_per_step']:7.3f} s outside any op's trace" in text
