r"""AlexNet on Imagenette (10 easy ImageNet classes; TFDS downloads it).

For Colab and quick experiments on real photos. Command:

  python -m alexnet_jax.main --config=configs/imagenette.py \
      --workdir=workdirs/imagenette

Needs network access for the one-time download (about 1.5 GB). Meant for a
Colab TPU v2-8 (mesh data 4 x model 2) or one GPU (--config.mesh.model=1).
Time and result have not been measured yet (the project's machines have no
network); it is a check of the real-photo path, not a paper number.
"""

import ml_collections

from configs import ilsvrc2010


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ilsvrc2010.get_config(arg)
  c.dataset = "imagenette"
  c.test_split = ""
  c.model.num_classes = 10
  c.num_epochs = 30
  c.checkpoint_every_steps = 500
  c.log_every_steps = 20
  return c
