"""The comparison with PyTorch (benchmarks/vs_torch.py, torch_alexnet.py).

torch is that benchmark's own dependency, not the project's: without it
the command must say how to install it; with it (where a developer has
installed it), PyTorch's step must be alexnet_jax's step.
"""

import jax
import numpy as np
import pytest

from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import weights
from benchmarks import train_step
from benchmarks import vs_torch
from tests import helpers


def test_without_torch_the_command_says_how_to_install_it():
  code = (
      "import runpy, sys\n"
      "sys.modules['torch'] = None  # import torch fails, as if absent\n"
      "runpy.run_module('benchmarks.vs_torch', run_name='__main__')\n"
  )
  proc = helpers.run_code(code, num_devices=1, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "pip install torch" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_report_table():
  report = dict(
      cpu="Some CPU",
      cpus_visible=2,
      jax="0.0",
      torch="0.0",
      batch_size=128,
      dtype="float32",
      rounds=5,
      reference="torch compile",
      results=[
          dict(
              case="jax 1x1",
              compile_s=2.5,
              step_s_median=4.0,
              images_per_s=32.0,
              speed_vs_reference=0.75,
          ),
          dict(
              case="torch compile",
              compile_s=40.0,
              step_s_median=3.0,
              images_per_s=42.7,
              speed_vs_reference=1.0,
          ),
      ],
  )
  table = vs_torch.format_report(report)
  assert "Some CPU, 2 cores" in table and "median of 5" in table
  assert "jax 1x1" in table and "0.750x" in table


def test_torch_train_step_equals_alexnet_jax_train_step():
  """Same weights, same batch, no dropout: two steps of each give the same
  losses and the same new weights (the network and §5's update rule, its
  momentum from the second step on; a weight decay 100x the paper's makes
  the decay term visible in float32)."""
  torch = pytest.importorskip("torch")
  from benchmarks import torch_alexnet  # pylint: disable=g-import-not-at-top

  config = helpers.tiny_config(dropout_rate=0.0)
  config.optim.weight_decay = 0.05
  mesh = parallel.make_mesh(1, 2)
  state, shardings = steps.create_train_state(
      config, jax.random.key(0), mesh, steps_per_epoch=10
  )
  # Bigger-than-init weights, so that every layer (LRN too) matters.
  state = state.replace(params=jax.tree.map(lambda p: p * 5.0, state.params))
  before = weights.to_caffe_layout(state.params)
  batch = train_step.random_batch(config, 8)
  step = steps.make_train_step(config, mesh, shardings, 10)
  model = torch_alexnet.AlexNet(before, dropout_rate=0.0)
  optimizer = torch_alexnet.PaperSGD(
      model,
      lr=config.optim.learning_rate,
      momentum=config.optim.momentum,
      weight_decay=config.optim.weight_decay,
  )
  torch_step = torch_alexnet.train_step_fn(model, optimizer)
  images = np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))
  for _ in range(2):
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    loss = torch_step(
        torch.from_numpy(images),
        torch.from_numpy(batch["label"].astype(np.int64)),
    )
    np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=1e-5)
  after = weights.to_caffe_layout(state.params)
  for name, value in after.items():
    theirs = model.params[name.replace(".", "_")].detach().numpy()
    np.testing.assert_allclose(
        theirs, value, rtol=1e-4, atol=1e-7, err_msg=name
    )
    # The steps moved the weights (a no-op update would pass the above; a
    # bias of 1 may not move in float32).
    assert name.endswith("bias") or not np.array_equal(value, before[name])
