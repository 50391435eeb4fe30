"""The model side of the package works without TensorFlow installed.

Accelerator hosts may have no TensorFlow: the model, the parallelism, the
optimizer, the train step, checkpoints and weights must not import it.
"""

from tests import helpers

_BLOCK_TENSORFLOW = """
import sys
for name in ("tensorflow", "tensorflow_datasets"):
  sys.modules[name] = None  # Makes `import tensorflow` raise ImportError.
"""


def test_model_side_imports_without_tensorflow():
  code = _BLOCK_TENSORFLOW + """
from alexnet_jax import checkpoint, eval_lib, model, optim, parallel, steps
from alexnet_jax import weights
from benchmarks import layers, train_step
import jax
config = model.default_config()
assert model.count_params(model.param_shapes(config)) == 60_965_224
print("ok")
"""
  proc = helpers.run_in_subprocess(code, num_devices=1)
  assert proc.stdout.strip().endswith("ok")


def test_input_pipeline_needs_tensorflow():
  """The guard above is real: the data side does import TensorFlow."""
  code = _BLOCK_TENSORFLOW + """
try:
  import alexnet_jax.input_pipeline
except ImportError:
  print("blocked")
"""
  proc = helpers.run_in_subprocess(code, num_devices=1)
  assert "blocked" in proc.stdout
