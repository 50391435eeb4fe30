r"""AlexNet on ILSVRC-2012 (TFDS `imagenet2012`, manual download).

Command:

  python -m alexnet_jax.main --config=configs/ilsvrc2012.py \
      --workdir=workdirs/ilsvrc2012

Data: `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` in
`<data_dir>/downloads/manual`. Images keep their sizes in TFDS; the pipeline
rescales them (shorter side 256, central 256x256) on the fly. Labels are the
1000 synsets sorted by WNID (TFDS's order, which is also Caffe's).

Hardware/time: as configs/ilsvrc2010.py (same model and schedule).
Expected result (paper Table 2, ILSVRC-2012 validation, one CNN): top-1
error 40.7%, top-5 error 18.2%. There are no public test labels, so the
final evaluation is on the validation split only.

Config arguments: those of configs/ilsvrc2010.py, and

  caffe_reference  the network of Caffe's trained `bvlc_alexnet`, to
      evaluate its weights (README "Caffe's trained AlexNet"): 227x227
      crops, Caffe's LRN (alpha / n, k=1, over both towers' maps),
      inverted dropout (Caffe's), and
      Caffe's init for training it from scratch. Commands:

        python -m alexnet_jax.weights convert \
            --caffemodel=bvlc_alexnet.caffemodel --out=bvlc_alexnet.npz \
            --mean=imagenet_mean.binaryproto --mean_out=imagenet_mean.npz
        python -m alexnet_jax.evaluate --npz=bvlc_alexnet.npz \
            --input_channels=bgr --config=configs/ilsvrc2012.py:caffe_reference
        python -m alexnet_jax.predict --npz=bvlc_alexnet.npz \
            --input_channels=bgr --mean=imagenet_mean.npz \
            --config=configs/ilsvrc2012.py:caffe_reference photo.jpg

      Caffe reads BGR images; `--input_channels=bgr` reverses conv1's input
      channels so that our RGB pipeline computes the same function. The
      images are centred by Caffe's own mean, `config.mean_image_file`
      (default imagenet_mean.npz in the working directory, as converted
      above; `--config.mean_image_file=PATH` elsewhere, empty for the mean
      of the training images).
      Published result (Caffe model zoo, ILSVRC-2012 validation, center
      crop): 57.1% top-1 / 80.2% top-5 accuracy, i.e. 42.9% / 19.8% error.
      Not run here (no ImageNet on this project's machines).
"""

import ml_collections

from configs import ilsvrc2010

ARGS = ilsvrc2010.ARGS + ("caffe_reference",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = ilsvrc2010.parse_args(arg, ARGS)
  reference = "caffe_reference" in args
  args.discard("caffe_reference")
  c = ilsvrc2010.get_config(",".join(sorted(args)))
  c.dataset = "imagenet2012"
  c.test_split = ""
  if reference:
    # Caffe's bvlc_alexnet: 227 crops (conv1 55x55 unpadded), LRN
    # (k + alpha / n * sum)^beta with k=1 (§3.3 has k=2 and no / n), and
    # dropout that doubles the kept outputs in training, so none at test
    # time (§4.2 scales by 0.5 at test time instead). Caffe's LRN layer
    # has no groups: it normalizes over both towers' maps, where the
    # paper's towers normalize their own (§3.3, §3.5; docs/paper.md "LRN").
    c.model.image_size = 227
    c.model.lrn.update(
        convention="caffe",
        k=1.0,
        n=5,
        alpha=1e-4,
        beta=0.75,
        across_towers=True,
    )
    c.model.dropout_scaling = "inverted"
    c.model.init = "caffe"
    # Caffe's mean image (imagenet_mean.binaryproto, converted by the
    # command above), not the one computed from the training images.
    c.mean_image_file = "imagenet_mean.npz"
  return c
