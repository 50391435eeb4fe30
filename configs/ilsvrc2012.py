r"""AlexNet on ILSVRC-2012 (TFDS `imagenet2012`, manual download).

Command:

  python -m alexnet_jax.main --config=configs/ilsvrc2012.py \
      --workdir=workdirs/ilsvrc2012

Data: `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` in
`<data_dir>/downloads/manual`. Images keep their sizes in TFDS; the pipeline
rescales them (shorter side 256, central 256x256) on the fly.

Hardware/time: as configs/ilsvrc2010.py (same model and schedule).
Expected result (paper Table 2, ILSVRC-2012 validation, one CNN): top-1
error 40.7%, top-5 error 18.2%. There are no public test labels, so the
final evaluation is on the validation split only.
"""

import ml_collections

from configs import ilsvrc2010


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ilsvrc2010.get_config(arg)
  c.dataset = "imagenet2012"
  c.test_split = ""
  return c
