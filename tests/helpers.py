"""Small shared pieces for the tests (tiny configs, subprocess runner)."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_collections

from alexnet_jax import model as model_lib
from alexnet_jax import optim

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  """The paper's network at reduced width and input size (same code).

  99x99 input: conv1 23x23 -> pool 11 -> pool 5 -> pool5 2x2, so fc6's
  (h, w, c) flattening is exercised.
  """
  c = model_lib.default_config()
  c.conv_features = (6, 8, 12, 12, 8)
  c.fc_features = (16, 16)
  c.num_classes = 10
  c.image_size = 99
  c.update(overrides)
  return c


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = tiny_model_config(**model_overrides)
  c.optim = optim.default_config()
  return c


def run_in_subprocess(code: str, num_devices: int, timeout: float = 300,
                      env: dict[str, str] | None = None
                      ) -> subprocess.CompletedProcess[str]:
  """Runs Python `code` with `num_devices` fake CPU devices; checks rc 0."""
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={num_devices}")
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                        env=full_env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, (
      f"subprocess failed (rc {proc.returncode}):\n{proc.stdout}\n"
      f"{proc.stderr}")
  return proc
