r"""The embedded demo: the paper's program on a generated mini ILSVRC-2010.

On a fresh machine with nothing downloaded:

  python -m alexnet_jax.main --config=configs/demo.py

generates the mini ILSVRC-2010 release (10 classes of drawn shapes, 300
training images per class, in the official archive layout) into
data/ilsvrc2010_mini/manual if absent, prepares it with the real TFDS builder
(stored at 72x72 instead of 256x256 to fit a CPU), and trains a
reduced-width version of the same two-tower model on a 2-device mesh. On a
CPU-only host the program makes the 2 devices itself (fake CPU devices), so
the model-parallel path runs. It ends with a table of 1-crop and 10-crop
top-1/top-5 errors, the trivial baseline and images/s.

Hardware, time and result: see README "Demo" (measured on the project's
2-core CPU machine).

Config arguments: `smoke` = a seconds-long run for tests (tiny model, 2
epochs, 8 images per class).
"""

import ml_collections

from configs import ilsvrc2010


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = arg == "smoke"
  if arg not in (None, "", "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; known: smoke")
  c = ilsvrc2010.get_config()
  c.dataset = "ilsvrc2010_mini"
  c.data_dir = "data/tfds"
  c.manual_dir = "data/ilsvrc2010_mini/manual"
  # What the generator writes (alexnet_jax.data.mini.MiniParams).
  c.mini = ml_collections.ConfigDict(dict(
      num_classes=10, train_per_class=300, val_per_class=50,
      test_per_class=50, image_size=96, seed=0))
  # The builder stores 72x72 images (the paper: 256); 64x64 crops.
  c.dataset_options = ml_collections.ConfigDict(
      dict(num_classes=10, image_size=72))
  c.model.image_size = 64
  c.model.num_classes = 10
  # A quarter of the paper's widths (per tower).
  c.model.conv_features = (12, 32, 48, 48, 32)
  c.model.fc_features = (256, 256)
  # Keep the paper's activation scale at reduced width (see model.py).
  c.model.init_scale_to_width = True
  c.batch_size = 64
  c.eval_batch_size = 100
  c.num_epochs = 12
  c.optim.schedule = "steps"
  c.optim.learning_rate = 0.02
  c.optim.boundary_epochs = (8, 11)
  c.shuffle_buffer_size = 3000
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.mesh.data = 1
  c.mesh.model = 2
  c.cpu_devices = 2
  if smoke:
    c.mini.update(train_per_class=8, val_per_class=3, test_per_class=3)
    c.manual_dir = "data/ilsvrc2010_mini_smoke/manual"
    c.model.conv_features = (4, 8, 8, 8, 8)
    c.model.fc_features = (16, 16)
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_epochs = 2
    c.optim.boundary_epochs = (1,)
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
  return c
