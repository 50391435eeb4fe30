"""The benchmark tool (alexnet_jax/benchmark.py) on the tiny model.

Figures are not checked (the machine is shared); what is checked is that
the report is complete, and that its analytic FLOPs and the collective
bytes it reads from the compiled HLO are exactly right.
"""

import json
import subprocess
import sys

import pytest

from alexnet_jax import benchmark
from alexnet_jax import model as model_lib
from tests import helpers


def test_paper_forward_multiply_adds():
  """The paper's ~724M multiply-adds per image (§3), exactly."""
  flops = benchmark.analytic_flops(model_lib.default_config())
  assert flops["forward_macs_per_layer"] == {
      "conv1": 55 * 55 * 96 * (11 * 11 * 3),
      "conv2": 27 * 27 * 256 * (5 * 5 * 48),  # Own tower's 48 channels.
      "conv3": 13 * 13 * 384 * (3 * 3 * 256),  # Both towers' 256.
      "conv4": 13 * 13 * 384 * (3 * 3 * 192),
      "conv5": 13 * 13 * 256 * (3 * 3 * 192),
      "fc6": 6 * 6 * 256 * 4096,
      "fc7": 4096 * 4096,
      "fc8": 4096 * 1000,
  }
  # A change here means the model's shapes changed.
  assert flops["forward_macs_per_image"] == 724_406_816
  assert flops["forward_macs_per_image"] == pytest.approx(724e6, rel=0.02)
  assert flops["forward_flops_per_image"] == 2 * 724_406_816
  assert flops["train_flops_per_image"] == 6 * 724_406_816
  assert flops["train_flops_per_image_exact"] == 2 * (
      3 * 724_406_816 - 55 * 55 * 96 * 363)
  # Without the kernel taps on zero padding (what XLA's cost analysis
  # counts): per dimension conv1 55*11 - 3 taps of 55*11, conv2 27*5 - 6 of
  # 27*5, conv3-5 13*3 - 2 of 13*3.
  assert flops["forward_macs_per_image_without_padding"] == (
      602 ** 2 * 96 * 3 + 129 ** 2 * 256 * 48 + 37 ** 2 * 384 * 256 +
      37 ** 2 * 384 * 192 + 37 ** 2 * 256 * 192 + 6 * 6 * 256 * 4096 +
      4096 * 4096 + 4096 * 1000) == 670_279_808


def test_tiny_forward_multiply_adds():
  # 99x99 input: conv1 23x23, pool1 11, pool2 5, pool5 2 (helpers.py).
  # Per tower (6, 8, 12, 12, 8) conv and (16, 16) fc units, 2 towers.
  flops = benchmark.analytic_flops(helpers.tiny_model_config())
  hand = (23 * 23 * 12 * (11 * 11 * 3)  # conv1
          + 11 * 11 * 16 * (5 * 5 * 6)  # conv2, own tower
          + 5 * 5 * 24 * (3 * 3 * 16)  # conv3, both towers
          + 5 * 5 * 24 * (3 * 3 * 12)  # conv4
          + 5 * 5 * 16 * (3 * 3 * 12)  # conv5
          + 2 * 2 * 16 * 32  # fc6
          + 32 * 32  # fc7
          + 32 * 10)  # fc8
  assert hand == 2_792_516
  assert flops["forward_macs_per_image"] == hand
  assert flops["train_flops_per_image"] == 6 * hand
  # 99 needs no padding in conv1; SAME padding: conv2 11*5 - 6 taps of 11*5
  # per dimension, conv3-5 5*3 - 2 of 5*3.
  assert flops["forward_macs_per_image_without_padding"] == (
      23 ** 2 * 121 * 12 * 3 + 49 ** 2 * 16 * 6 + 13 ** 2 * 24 * 16 +
      13 ** 2 * 24 * 12 + 13 ** 2 * 16 * 12 + 2 * 2 * 16 * 32 + 32 * 32 +
      32 * 10)


@pytest.fixture(scope="module")
def report():
  return benchmark.run(helpers.tiny_config(), batch_sizes=(4, 8),
                       meshes="1x1,1x2", dtypes=("float32",), steps=2,
                       warmup=1, matmul_size=256, log=lambda *_: None)


def test_report_is_complete_json(report):
  report = json.loads(json.dumps(report, default=float))
  assert report["backend"] == "cpu"
  assert report["num_params"] == 18_090
  assert [(r["mesh"], r["devices"], r["dtype"], r["batch_size"])
          for r in report["results"]] == [
              ("1x1", 1, "float32", 4), ("1x1", 1, "float32", 8),
              ("1x2", 2, "float32", 4), ("1x2", 2, "float32", 8)]
  # The sweep names the fastest batch of each mesh.
  assert [(b["mesh"], b["batch_sizes"]) for b in report["best_batch"]] == [
      ("1x1", [4, 8]), ("1x2", [4, 8])]
  for best in report["best_batch"]:
    assert best["images_per_s"] == max(
        r["images_per_s"] for r in report["results"]
        if r["mesh"] == best["mesh"])
  for r in report["results"]:
    for key in ("images_per_s", "images_per_cpu_s", "lower_s", "compile_s",
                "achieved_flops_per_s", "peak_flops_per_s", "mfu",
                "xla_train_flops_per_image", "xla_forward_flops_per_image"):
      assert r[key] > 0, (r["mesh"], key, r[key])
    assert len(r["step_s"]) == 2
    # XLA counts the convolutions and matmuls without the taps on padding,
    # plus elementwise work (bias, ReLU, LRN, pooling).
    xla = r["xla_forward_flops_per_image"]
    unpadded = report["analytic_flops"][
        "forward_flops_per_image_without_padding"]
    assert unpadded <= xla <= 1.1 * unpadded, (xla, unpadded)
    assert r["memory"]["peak_device_bytes"] is None  # CPU: not reported.
    assert r["memory"]["compiled_bytes_per_device"] > 0
  table = benchmark.format_report(report)
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
  expected = {"model_forward": forward, "model_backward": backward,
              "data": 0.0, "total": forward + backward}
  assert two["analytic_collective_bytes_per_device"] == expected
  assert two["collective_bytes_sent_per_device"] == expected
  assert sorted((c["phase"], c["op"], c["types"][0])
                for c in two["collectives"] if c["sent_bytes"]) == [
                    ("backward", "all-gather", "f32[4,32]"),
                    ("backward", "reduce-scatter", "f32[4,16]"),
                    ("backward", "reduce-scatter", "f32[4,5,5,8]"),
                    ("forward", "all-gather", "f32[4,32]"),
                    ("forward", "all-gather", "f32[4,5,5,16]"),
                    ("forward", "all-reduce", "f32[4,10]"),
                    ("forward", "reduce-scatter", "f32[4,16]"),
                ]


def test_mesh_shapes():
  assert benchmark.mesh_shapes("auto", 1, 2, 128) == [(1, 1)]
  assert benchmark.mesh_shapes("auto", 2, 2, 128) == [(1, 1), (1, 2),
                                                      (2, 1)]
  assert benchmark.mesh_shapes("auto", 4, 2, 128) == [
      (1, 1), (1, 2), (2, 1), (2, 2), (4, 1)]
  assert benchmark.mesh_shapes("auto", 2, 1, 128) == [(1, 1), (2, 1)]
  assert benchmark.mesh_shapes("1x2, 2x2", 4, 2, 128) == [(1, 2), (2, 2)]
  assert benchmark.mesh_shapes("none", 4, 2, 128) == []


def test_model_benchmark_does_not_import_tensorflow():
  code = ("import sys, alexnet_jax.benchmark; "
          "assert 'tensorflow' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO_ROOT,
                 check=True, timeout=120)


def test_best_batch_skips_batches_that_did_not_fit():
  results = [
      dict(mesh="1x1", dtype="bfloat16", batch_size=128, images_per_s=10.0),
      dict(mesh="1x1", dtype="bfloat16", batch_size=512, images_per_s=30.0),
      dict(mesh="1x1", dtype="bfloat16", batch_size=4096,
           error="out of device memory"),
      dict(mesh="1x2", dtype="bfloat16", batch_size=128, images_per_s=5.0),
  ]
  assert benchmark.best_batches(results) == [dict(
      mesh="1x1", dtype="bfloat16", batch_size=512, images_per_s=30.0,
      batch_sizes=[128, 512])]
  assert "out of device memory" in benchmark.format_row(results[2])


def test_bad_batch_size_flag_is_a_usage_error():
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.benchmark", "--batch_size=128,x",
       "--meshes=none"], cwd=helpers.REPO_ROOT, capture_output=True,
      text=True, check=False)
  assert result.returncode != 0
  assert "--batch_size=128,x: give positive integers" in result.stderr


def test_interleaved_cases_run_the_same_steps(report):
  """--interleave: same cases and the same training as one after another."""
  interleaved = benchmark.run(
      helpers.tiny_config(), batch_sizes=(4,), meshes="1x1,1x2",
      dtypes=("float32",), steps=2, warmup=1, matmul_size=256,
      interleave=True, log=lambda *_: None)
  apart = {r["mesh"]: r for r in report["results"] if r["batch_size"] == 4}
  assert [r["mesh"] for r in interleaved["results"]] == ["1x1", "1x2"]
  assert interleaved["results"][0]["speed_vs_first_case"] == 1.0
  assert "speed relative to 1x1 float32" in benchmark.format_report(
      interleaved)
  for r in interleaved["results"]:
    assert len(r["step_s"]) == 2 and r["images_per_s"] > 0
    assert r["speed_vs_first_case"] > 0
    assert r["final_loss"] == pytest.approx(apart[r["mesh"]]["final_loss"],
                                            rel=1e-6)
    assert r["collective_bytes_sent_per_device"] == apart[r["mesh"]][
        "collective_bytes_sent_per_device"]
