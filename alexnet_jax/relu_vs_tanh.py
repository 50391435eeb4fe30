r"""The paper's Figure 1 (§3.1): ReLU vs tanh units, trained to 25% error.

  python -m alexnet_jax.relu_vs_tanh [--workdir=workdirs/relu_vs_tanh] \
      [--data_dir=/usr/share/datasets/fashion-mnist] \
      [--max_train_images=0] [--epochs=0.25] [--evals_per_epoch=40] \
      [--relu_learning_rates=0.01,0.03,0.1,0.3] [--tanh_learning_rates=...]

§3.1: "A four-layer convolutional neural network with ReLUs (solid line)
reaches a 25% training error rate on CIFAR-10 six times faster than an
equivalent network with tanh neurons (dashed line). The learning rates for
each network were chosen independently to make training as fast as possible.
No regularization of any kind was employed."

CIFAR-10 cannot be downloaded where this project is developed; the data here
are the 70,000 Fashion-MNIST product photos (28x28 grey, 10 classes; CIFAR-10
is 32x32 color), from the Debian package `dataset-fashion-mnist`, read where
it installs them. The paper does not describe its four-layer net; this one
follows cuda-convnet's CIFAR-10 example (layers-18pct): three 5x5
convolutions of 32, 32 and 64 kernels, each followed by 3x3/2 max-pooling,
and a 10-way fully connected layer, without response normalization. The
hidden units are ReLUs or tanh; everything else is the same (flax's default
init from the same seed, the same batches). Training: SGD with momentum
0.9, batch 128, a constant learning rate, no weight decay, dropout or
augmentation. Each activation trains with every rate of its grid; its
fastest (fewest epochs to the target error) is its rate, as in the paper.

Training error is measured `--evals_per_epoch` times per epoch on a fixed
set of `--error_images` training images, so the epochs to the target are
fractional: the first crossing, interpolated linearly between two
measurements. An epoch is one pass over the training images used (all
60,000 by default); on this easier data 25% comes within a fraction of one.

Writes `relu_vs_tanh.png` (training error vs epochs, the fastest rate of
each activation: ReLU solid, tanh dashed, the target dotted) and
`relu_vs_tanh.json` (every run's curve, epochs to the target, the ratio)
into --workdir and prints their paths.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import cli

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = dict(
    train_images="train-images-idx3-ubyte.gz",
    train_labels="train-labels-idx1-ubyte.gz",
    test_images="t10k-images-idx3-ubyte.gz",
    test_labels="t10k-labels-idx1-ubyte.gz",
)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs as a program.

  absl flags are global: defined at import, they would collide with
  another program's (e.g. --workdir) in a process that imports both
  (the tests).
  """
  flags.DEFINE_string(
      "workdir", "workdirs/relu_vs_tanh", "Where the PNG and the JSON go."
  )
  flags.DEFINE_string(
      "data_dir",
      DEFAULT_DATA_DIR,
      f"Fashion-MNIST's gzipped IDX files (Debian package {DEBIAN_PACKAGE}).",
  )
  flags.DEFINE_integer(
      "max_train_images",
      0,
      "Train on the first N of a seeded shuffle of the 60,000 training "
      "images (0 = all).",
  )
  flags.DEFINE_float(
      "epochs", 0.25, "Epochs each run trains (fractions allowed)."
  )
  flags.DEFINE_list(
      "relu_learning_rates",
      ["0.01", "0.03", "0.1", "0.3"],
      "Learning-rate grid of the ReLU net.",
  )
  flags.DEFINE_list(
      "tanh_learning_rates",
      ["0.01", "0.03", "0.1", "0.3"],
      "Learning-rate grid of the tanh net.",
  )
  flags.DEFINE_float(
      "target_error", 0.25, "Training error to reach (the paper: 25%)."
  )
  flags.DEFINE_list(
      "extra_targets",
      ["0.2", "0.15"],
      "Further training errors reported the same way (not in the paper).",
  )
  flags.DEFINE_integer(
      "evals_per_epoch", 40, "Training-error measurements per epoch."
  )
  flags.DEFINE_integer(
      "error_images",
      1000,
      "Size of the fixed training subset the error is measured on.",
  )
  flags.DEFINE_integer("batch_size", 128, "SGD batch size.")
  flags.DEFINE_integer("seed", 0, "Init, shuffles and subsets.")


class DataError(RuntimeError):
  """The data are missing or malformed; the message says what to do."""


def read_idx(path: str) -> np.ndarray:
  """A gzipped IDX file (the MNIST format) as a uint8 array."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  if data[:2] != b"\0\0" or data[2] != 0x08:
    raise DataError(f"{path} is not an IDX file of unsigned bytes.")
  ndim = data[3]
  shape = tuple(
      int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise DataError(f"{path}: {array.size} bytes for shape {shape}.")
  return array.reshape(shape)


def load_fashion_mnist(
    data_dir: str = DEFAULT_DATA_DIR,
) -> dict[str, np.ndarray]:
  """Fashion-MNIST: train/test images [N, 28, 28] uint8 and labels [N]."""
  missing = [
      n for n in FILES.values() if not os.path.exists(os.path.join(data_dir, n))
  ]
  if missing:
    raise DataError(
        f"Fashion-MNIST not found in {data_dir} (missing {', '.join(missing)})"
        f". Install the Debian package {DEBIAN_PACKAGE}: `sudo apt-get "
        f"install {DEBIAN_PACKAGE}`, or pass --data_dir."
    )
  return {k: read_idx(os.path.join(data_dir, n)) for k, n in FILES.items()}


class FourLayerNet(nn.Module):
  """The paper's four-layer CIFAR-10 net: 3 convolutions and 1 classifier."""

  activation: str = "relu"
  features: Sequence[int] = (32, 32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = dict(relu=nn.relu, tanh=jnp.tanh)[self.activation]
    for f in self.features:
      x = act(nn.Conv(f, (5, 5), padding="SAME")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def prepare_images(images: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] on [0, 1] minus the mean."""
  return (images.astype(np.float32) / 255.0 - mean)[..., None]


def first_crossing(
    epochs: Sequence[float], errors: Sequence[float], target: float
) -> float | None:
  """Epochs at which `errors` first reaches `target` (linear interpolation).

  None if it never does. A curve that starts at or below the target
  crosses at its first point.
  """
  for i, (e, err) in enumerate(zip(epochs, errors)):
    if err <= target:
      if i == 0:
        return float(e)
      e0, err0 = epochs[i - 1], errors[i - 1]
      return float(e0 + (e - e0) * (err0 - target) / (err0 - err))
  return None


@functools.cache
def _compiled(activation: str):
  """Jitted train step and error count of one activation's net.

  The learning rate is an argument, so every run of a grid reuses them.
  """
  net = FourLayerNet(activation)

  @jax.jit
  def step(params, velocity, images, labels, learning_rate):
    def loss_fn(p):
      logits = net.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels
      ).mean()

    grads = jax.grad(loss_fn)(params)
    # SGD with momentum 0.9 (§5's rule without weight decay):
    # v <- 0.9 v - lr grad; w <- w + v.
    velocity = jax.tree.map(
        lambda v, g: 0.9 * v - learning_rate * g, velocity, grads
    )
    return jax.tree.map(jnp.add, params, velocity), velocity

  @jax.jit
  def errors(params, images, labels):
    logits = net.apply({"params": params}, images)
    return jnp.sum(jnp.argmax(logits, -1) != labels)

  return net, step, errors


def train_run(
    activation: str,
    learning_rate: float,
    data: dict[str, Any],
    *,
    epochs: float,
    evals_per_epoch: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
  """Trains one net; returns its training-error curve."""
  net, step, errors = _compiled(activation)
  x, y = data["x"], data["y"]
  # The same init for every run of an activation (flax's defaults: LeCun
  # normal kernels, zero biases).
  params = net.init(jax.random.key(seed), x[:1])["params"]
  velocity = jax.tree.map(jnp.zeros_like, params)
  lr = jnp.float32(learning_rate)

  def error_rate(params):
    wrong = sum(
        int(
            errors(
                params,
                data["error_x"][i : i + 500],
                data["error_y"][i : i + 500],
            )
        )
        for i in range(0, len(data["error_y"]), 500)
    )
    return wrong / len(data["error_y"])

  steps_per_epoch = len(y) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"{len(y)} training images < batch size {batch_size}.")
  total = max(1, int(round(epochs * steps_per_epoch)))
  eval_every = max(1, round(steps_per_epoch / evals_per_epoch))
  # The data order depends on the seed only: every run sees the same
  # batches.
  rng = np.random.default_rng(seed)
  curve_epochs, curve_errors = [0.0], [error_rate(params)]
  order = np.empty(0, np.int64)
  start = time.time()
  for s in range(total):
    if s % steps_per_epoch == 0:
      order = rng.permutation(len(y))
    i = order[(s % steps_per_epoch) * batch_size :][:batch_size]
    params, velocity = step(params, velocity, x[i], y[i], lr)
    if (s + 1) % eval_every == 0 or s + 1 == total:
      curve_epochs.append((s + 1) / steps_per_epoch)
      curve_errors.append(error_rate(params))
  return dict(
      activation=activation,
      learning_rate=learning_rate,
      epochs=curve_epochs,
      train_error=curve_errors,
      seconds=time.time() - start,
  )


def make_data(
    raw: dict[str, np.ndarray],
    max_train_images: int,
    error_images: int,
    seed: int,
) -> dict[str, np.ndarray]:
  """The training subset and the fixed subset the error is measured on."""
  n = len(raw["train_labels"])
  order = np.random.default_rng(seed).permutation(n)
  train = order[:max_train_images] if max_train_images else order
  mean = raw["train_images"][train].astype(np.float32).mean(0) / 255.0
  x = prepare_images(raw["train_images"][train], mean)
  y = raw["train_labels"][train].astype(np.int32)
  k = min(error_images, len(train))
  return dict(x=x, y=y, error_x=x[:k], error_y=y[:k])


def run_figure(
    data: dict[str, np.ndarray],
    learning_rates: dict[str, list],
    *,
    target: float,
    extra_targets: Sequence[float],
    epochs: float,
    evals_per_epoch: int,
    batch_size: int,
    seed: int,
    log=print,
) -> dict[str, Any]:
  """Trains every (activation, learning rate); picks each's fastest rate."""
  runs = []
  for activation, lrs in learning_rates.items():
    for lr in lrs:
      run = train_run(
          activation,
          lr,
          data,
          epochs=epochs,
          evals_per_epoch=evals_per_epoch,
          batch_size=batch_size,
          seed=seed,
      )
      run["epochs_to_target"] = {
          str(t): first_crossing(run["epochs"], run["train_error"], t)
          for t in (target, *extra_targets)
      }
      runs.append(run)
      reached = run["epochs_to_target"][str(target)]
      log(
          f"{activation} lr {lr:g}: final training error "
          f"{100 * run['train_error'][-1]:.1f}%, epochs to "
          f"{100 * target:g}%: "
          f"{'not reached' if reached is None else f'{reached:.3f}'} "
          f"({run['seconds']:.0f} s)"
      )

  def best(activation, t):
    """The run of `activation` that reaches error `t` first."""
    done = [
        r
        for r in runs
        if r["activation"] == activation
        and r["epochs_to_target"][str(t)] is not None
    ]
    return min(done, key=lambda r: r["epochs_to_target"][str(t)], default=None)

  summary = {}
  for t in (target, *extra_targets):
    row = {}
    for activation in learning_rates:
      b = best(activation, t)
      row[activation] = (
          None
          if b is None
          else dict(
              learning_rate=b["learning_rate"],
              epochs=b["epochs_to_target"][str(t)],
          )
      )
    relu, tanh = row.get("relu"), row.get("tanh")
    row["tanh_over_relu"] = (
        tanh["epochs"] / relu["epochs"]
        if relu and tanh and relu["epochs"] > 0
        else None
    )
    summary[str(t)] = row
  return dict(target_error=target, runs=runs, summary=summary)


def draw(result: dict[str, Any]) -> np.ndarray:
  """Training error vs epochs of each activation's fastest rate."""
  from alexnet_jax import figures  # pylint: disable=g-import-not-at-top

  target = result["target_error"]
  series = []
  for activation, style in (("relu", "solid"), ("tanh", "dashed")):
    best = result["summary"][str(target)].get(activation)
    if best is None:  # Never reached: draw its lowest-error run.
      candidates = [r for r in result["runs"] if r["activation"] == activation]
      if not candidates:
        continue
      run = min(candidates, key=lambda r: min(r["train_error"]))
    else:
      run = next(
          r
          for r in result["runs"]
          if r["activation"] == activation
          and r["learning_rate"] == best["learning_rate"]
      )
    series.append(
        dict(
            x=run["epochs"],
            y=run["train_error"],
            style=style,
            label=f"{activation} (lr {run['learning_rate']:g})",
        )
    )
  return figures.line_plot(
      series,
      hlines=[(target, f"{100 * target:g}%")],
      xlabel="epochs",
      ylabel="training error",
      y_range=(0.0, 1.0),
      title="Figure 1: ReLU (solid) vs tanh (dashed)",
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  raw = load_fashion_mnist(FLAGS.data_dir)
  start = time.time()
  data = make_data(raw, FLAGS.max_train_images, FLAGS.error_images, FLAGS.seed)
  lrs = dict(
      relu=[float(v) for v in FLAGS.relu_learning_rates],
      tanh=[float(v) for v in FLAGS.tanh_learning_rates],
  )
  result = run_figure(
      data,
      lrs,
      target=FLAGS.target_error,
      extra_targets=[float(t) for t in FLAGS.extra_targets],
      epochs=FLAGS.epochs,
      evals_per_epoch=FLAGS.evals_per_epoch,
      batch_size=FLAGS.batch_size,
      seed=FLAGS.seed,
  )
  result.update(
      data=dict(
          name="Fashion-MNIST",
          data_dir=FLAGS.data_dir,
          train_images=len(data["y"]),
          error_images=len(data["error_y"]),
          image_shape=list(data["x"].shape[1:]),
      ),
      seed=FLAGS.seed,
      batch_size=FLAGS.batch_size,
      evals_per_epoch=FLAGS.evals_per_epoch,
      seconds=time.time() - start,
      devices=str(jax.devices()),
  )
  os.makedirs(FLAGS.workdir, exist_ok=True)
  png = os.path.join(FLAGS.workdir, "relu_vs_tanh.png")
  path = os.path.join(FLAGS.workdir, "relu_vs_tanh.json")
  from PIL import Image  # pylint: disable=g-import-not-at-top

  Image.fromarray(draw(result)).save(png)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  for t, row in result["summary"].items():
    parts = [
        f"{a}: "
        + (
            "not reached"
            if row[a] is None
            else f"{row[a]['epochs']:.3f} epochs (lr "
            f"{row[a]['learning_rate']:g})"
        )
        for a in lrs
    ]
    ratio = row["tanh_over_relu"]
    print(
        f"training error {100 * float(t):g}%: {'; '.join(parts)}; "
        f"tanh / relu = {'n/a' if ratio is None else f'{ratio:.2f}'}"
    )
  print(f"wrote {png}\nwrote {path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, user_errors=(DataError,))
