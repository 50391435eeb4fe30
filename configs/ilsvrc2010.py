r"""The paper's setup: AlexNet on ILSVRC-2010 (Krizhevsky et al. 2012, §5).

Command (from the repository root):

  python -m alexnet_jax.main --config=configs/ilsvrc2010.py \
      --workdir=workdirs/ilsvrc2010

Data: the official ILSVRC-2010 release files in `<data_dir>/downloads/manual`
(or `--config.manual_dir=...`); see README "Data: ILSVRC-2010". Without them
the program stops and names each missing file.

Hardware and time: the authors trained for 5-6 days on two GTX 580 3GB GPUs
(about 90 epochs); this config is the same 2-tower program on a data x model
mesh (mesh.model=2; mesh.data=-1 uses every remaining device for data
parallelism). Expected result (paper Table 1, ILSVRC-2010 test, 10 patches):
top-1 error 37.5%, top-5 error 17.0%.

Config arguments (`--config=configs/ilsvrc2010.py:ARG`, comma-separated):
  caffe_init   Caffe's bvlc_alexnet init (fc6/fc7 std 0.005, biases 0.1).
  caffe_lrn    Caffe's LRN convention (alpha / n, k=1) and 227x227 crops.
  steps        /10 every 30 epochs instead of on validation plateaus.
  bf16         bfloat16 convolutions and matmuls (float32 params and loss).
  one_tower    The paper's one-tower ablation (§6.1 "half the kernels").
"""

import ml_collections

from alexnet_jax import model
from alexnet_jax import optim

ARGS = ("caffe_init", "caffe_lrn", "steps", "bf16", "one_tower")


def parse_args(arg: str | None) -> set[str]:
  args = {a for a in (arg or "").split(",") if a}
  unknown = args - set(ARGS)
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; "
                     f"known: {list(ARGS)}")
  return args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_args(arg)
  c = ml_collections.ConfigDict()

  # Data (§2, §4.1). dataset: ilsvrc2010, ilsvrc2010_mini, imagenet2012,
  # imagenette. data_dir holds the prepared TFDS data; manual_dir the
  # downloaded release files (default <data_dir>/downloads/manual).
  c.dataset = "ilsvrc2010"
  c.data_dir = "data/tfds"
  c.manual_dir = ml_collections.config_dict.placeholder(str)
  c.train_split = "train"
  c.eval_split = "validation"  # Watched for the plateau schedule.
  c.test_split = "test"  # Evaluated at the end ("" to skip).
  c.pca_lighting_std = 0.1  # §4.1: alpha_i ~ N(0, 0.1); 0 disables.
  c.pca_lighting_scale = "std"  # See input_pipeline.py; or unit_variance.
  c.stats_max_images = ml_collections.config_dict.placeholder(int)
  c.shuffle_buffer_size = 10_000

  # Training (§5).
  c.batch_size = 128  # Global, over all devices and processes.
  c.eval_batch_size = 128
  c.num_epochs = 90
  c.seed = 0
  c.eval_every_epochs = 1  # Also the plateau schedule's clock.
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  # Final evaluations: "center" (one crop) and "ten" (the paper's 10 patches).
  c.final_eval_crops = ("center", "ten")
  # Devices: data x model. model=2: one tower per device, as on the paper's
  # two GPUs; model=1: both towers on each device. data=-1: all the rest.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=2))
  # On a CPU-only host, make this many fake CPU devices (0: leave as is),
  # so the model-parallel program runs anywhere.
  c.cpu_devices = 0

  c.model = model.default_config()
  c.optim = optim.default_config()

  if "caffe_init" in args:
    c.model.init = "caffe"
  if "caffe_lrn" in args:
    c.model.lrn.update(convention="caffe", k=1.0)
    c.model.image_size = 227
  if "steps" in args:
    c.optim.schedule = "steps"
    c.optim.boundary_epochs = (30, 60, 90)  # /10 every 30 epochs.
  if "bf16" in args:
    c.model.dtype = "bfloat16"
  if "one_tower" in args:
    c.model.num_towers = 1
    c.mesh.model = 1
  return c
