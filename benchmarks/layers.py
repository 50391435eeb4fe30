r"""Alternative forms of the costliest layers, timed against the model's own.

A tool, not a test. The train-step profile (`python -m benchmarks.train_step
--profile`) names max-pool, LRN and conv1 among the largest costs; this
times other ways to compute each, in isolation at the paper's shapes, so a
change to model.py can be judged on the backend at hand before it is timed
in the whole step:

  python -m benchmarks.layers [--batch_size=128]
      [--layers=pool,lrn,conv1,wgrad] [--dtypes=float32,bfloat16]
      [--repeats=7]

  pool:  max-pool 3/2 as `reduce_window` + XLA's select-and-scatter
         gradient (the model's form) vs the maximum of 9 strided slices with
         a custom gradient (`slice_max_pool`, same gradient, ties included);
  lrn:   the model's `reduce_window` channel sum vs 5 shifted slices vs a
         banded matmul;
  conv1: the stride-4 11x11 convolution (the model's) vs space-to-depth
         (4x4 blocks, a stride-1 3x3 convolution on 48 channels);
  wgrad: weight gradients of conv1-conv4 from XLA vs im2col + one matmul.

Each line: median wall time of `--repeats` calls after one untimed call
(forward, and forward + backward of sum(y^2): the input gradient, or for
conv1 the kernel gradient, as in the model), and the largest difference of
that gradient from the model's form's. Figures and conclusions on CPU are in
benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import cli
from alexnet_jax import layers as model_layers
from alexnet_jax import model as model_lib
from alexnet_jax import parallel

_DN = ("NHWC", "HWIO", "NHWC")


def time_call(fn: Callable[..., object], *args, repeats: int = 7) -> float:
  """Median wall seconds of `fn(*args)` (blocked on) after one warm-up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ---------------------------------------------------------------------------
# Max-pool.
# ---------------------------------------------------------------------------


def reduce_window_pool(x, window: int = 3, stride: int = 2):
  """The model's max-pool (flax's `nn.max_pool` is this reduce-window)."""
  return jax.lax.reduce_window(
      x,
      -jnp.inf,
      jax.lax.max,
      (1, window, window, 1),
      (1, stride, stride, 1),
      "VALID",
  )


def _window_tap(x, i: int, j: int, stride: int, out_h: int, out_w: int):
  """x[:, i::stride, j::stride] cut to out_h x out_w: what window offset
  (i, j) reads at every output position."""
  batch, _, _, channels = x.shape
  return jax.lax.slice(
      x,
      (0, i, j, 0),
      (
          batch,
          i + stride * (out_h - 1) + 1,
          j + stride * (out_w - 1) + 1,
          channels,
      ),
      (1, stride, stride, 1),
  )


def _pool_windows(x, window: int, stride: int):
  """(i, j, `_window_tap` of offset (i, j)) for the pooled size, row-major."""
  _, height, width, _ = x.shape
  out_h = model_layers.pool_out_size(height, window, stride)
  out_w = model_layers.pool_out_size(width, window, stride)
  return [
      (i, j, _window_tap(x, i, j, stride, out_h, out_w))
      for i in range(window)
      for j in range(window)
  ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def slice_max_pool(x, window: int = 3, stride: int = 2):
  """Max-pool as the maximum of window^2 strided slices.

  Its gradient goes to the first maximum of each window in row-major order,
  like XLA's select-and-scatter: the same function and gradient as
  `reduce_window_pool`.
  """
  return functools.reduce(
      jnp.maximum, [v for _, _, v in _pool_windows(x, window, stride)]
  )


def _slice_pool_fwd(x, window, stride):
  y = slice_max_pool(x, window, stride)
  return y, (x, y)


def _slice_pool_bwd(window, stride, residuals, grad):
  x, y = residuals
  _, height, width, _ = x.shape
  out_h, out_w = y.shape[1:3]
  zero = jnp.zeros((), x.dtype)
  taken = jnp.zeros(y.shape, bool)
  dx = jnp.zeros_like(x)
  for i, j, x_ij in _pool_windows(x, window, stride):
    first = (x_ij == y) & ~taken
    taken = taken | first
    # Back to x[:, i::stride, j::stride]: interior padding puts stride - 1
    # zeros between the pooled positions.
    dx = dx + jax.lax.pad(
        jnp.where(first, grad, zero).astype(x.dtype),
        zero,
        (
            (0, 0, 0),
            (i, height - i - stride * (out_h - 1) - 1, stride - 1),
            (j, width - j - stride * (out_w - 1) - 1, stride - 1),
            (0, 0, 0),
        ),
    )
  return (dx,)


slice_max_pool.defvjp(_slice_pool_fwd, _slice_pool_bwd)


# ---------------------------------------------------------------------------
# LRN (paper constants, 2 towers).
# ---------------------------------------------------------------------------


def model_lrn(x):
  return model_layers.local_response_norm(
      x, 2, convention="paper", k=2.0, n=5, alpha=1e-4, beta=0.75
  )


def shifted_slices_lrn(
    x,
    n: int = 5,
    k: float = 2.0,
    alpha: float = 1e-4,
    beta: float = 0.75,
    towers: int = 2,
):
  *lead, channels = x.shape
  per_tower = channels // towers
  x_T = x.astype(jnp.float32).reshape(*lead, towers, per_tower)
  padded = jnp.pad(
      jnp.square(x_T), ((0, 0),) * (x_T.ndim - 1) + ((n // 2, n - 1 - n // 2),)
  )
  sq_sum = sum(padded[..., i : i + per_tower] for i in range(n))
  y = x_T * jnp.power(k + alpha * sq_sum, -beta)
  return y.reshape(x.shape).astype(x.dtype)


def banded_matmul_lrn(
    x,
    n: int = 5,
    k: float = 2.0,
    alpha: float = 1e-4,
    beta: float = 0.75,
    towers: int = 2,
):
  channels = x.shape[-1]
  index = np.arange(channels)
  band = (np.abs(index[:, None] - index[None, :]) <= n // 2) & (
      index[:, None] // (channels // towers)
      == index[None, :] // (channels // towers)
  )
  sq_sum = jnp.square(x) @ jnp.asarray(band, x.dtype)
  y = x.astype(jnp.float32) * jnp.power(
      k + alpha * sq_sum.astype(jnp.float32), -beta
  )
  return y.astype(x.dtype)


# ---------------------------------------------------------------------------
# conv1 and weight gradients.
# ---------------------------------------------------------------------------


def strided_conv1(x, kernel):
  """The model's conv1: stride 4, bottom/right padding to 55x55 at 224."""
  pad = model_layers.conv1_padding(x.shape[1])
  return jax.lax.conv_general_dilated(
      x, kernel, (4, 4), ((0, pad), (0, pad)), dimension_numbers=_DN
  )


def space_to_depth_conv1(x, kernel):
  """conv1 on 4x4 pixel blocks: a stride-1 3x3 conv on 16 x 3 channels."""
  batch, size, _, channels = x.shape
  out = model_layers.conv_out_size(size, 11, 4)
  blocks = out + 2  # 4 * blocks = 4 * (out - 1) + 12 covers the last 11.
  x = jnp.pad(
      x, ((0, 0), (0, 4 * blocks - size), (0, 4 * blocks - size), (0, 0))
  )
  x = (
      x.reshape(batch, blocks, 4, blocks, 4, channels)
      .transpose(0, 1, 3, 2, 4, 5)
      .reshape(batch, blocks, blocks, 16 * channels)
  )
  features = kernel.shape[-1]
  kernel = (
      jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
      .reshape(3, 4, 3, 4, channels, features)
      .transpose(0, 2, 1, 3, 4, 5)
      .reshape(3, 3, 16 * channels, features)
  )
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=_DN
  )


def xla_weight_gradient(x, dy, kernel_shape, stride, padding):
  conv = lambda k: jax.lax.conv_general_dilated(
      x, k, (stride, stride), padding, dimension_numbers=_DN
  )
  _, vjp = jax.vjp(conv, jnp.zeros(kernel_shape, x.dtype))
  return vjp(dy)[0]


def im2col_weight_gradient(x, dy, kernel_shape, stride, padding):
  """dW = patches(x)^T @ dy, the patches cut with kh * kw strided slices."""
  kh, kw, channels, features = kernel_shape
  batch, out_h, out_w, _ = dy.shape
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  patches = jnp.stack(
      [
          _window_tap(x, i, j, stride, out_h, out_w)
          for i in range(kh)
          for j in range(kw)
      ],
      axis=3,
  )
  rows = batch * out_h * out_w
  grad = jnp.dot(
      patches.reshape(rows, kh * kw * channels).T,
      dy.reshape(rows, features),
      preferred_element_type=jnp.float32,
  )
  return grad.reshape(kernel_shape).astype(x.dtype)


# ---------------------------------------------------------------------------
# The runs.
# ---------------------------------------------------------------------------


def _jit(fn):
  """`jax.jit` with the XLA options the model's programs compile with."""
  return jax.jit(fn, compiler_options=parallel.compiler_options(None))


def _forward_backward(fn, argnums=0):
  loss = lambda *args: jnp.sum(jnp.square(fn(*args).astype(jnp.float32)))
  return _jit(jax.value_and_grad(loss, argnums=argnums))


def _max_difference(a, b, relative: bool) -> float:
  a, b = (np.asarray(v, np.float32) for v in (a, b))
  diff = float(np.max(np.abs(a - b)))
  return diff / max(float(np.max(np.abs(b))), 1e-30) if relative else diff


def compare_layer(
    name: str,
    forms: dict[str, Callable[..., object]],
    args: Sequence[jax.Array],
    repeats: int,
    argnums=0,
    relative: bool = True,
) -> list[dict[str, object]]:
  """Times forward and forward+backward of each form; the first is the
  reference for the differences (of the gradient)."""
  rows = []
  reference = None
  for form, fn in forms.items():
    forward_backward = _forward_backward(fn, argnums)
    grads = forward_backward(*args)[1]
    grads = grads if isinstance(grads, tuple) else (grads,)
    if reference is None:
      reference = grads
    rows.append(
        dict(
            layer=name,
            form=form,
            shape=[list(a.shape) for a in args],
            dtype=str(args[0].dtype),
            forward_s=time_call(_jit(fn), *args, repeats=repeats),
            forward_backward_s=time_call(
                forward_backward, *args, repeats=repeats
            ),
            gradient_difference=max(
                _max_difference(g, r, relative)
                for g, r in zip(grads, reference)
            ),
        )
    )
  return rows


def run(
    batch_size: int = 128,
    layers: Sequence[str] = ("pool", "lrn", "conv1", "wgrad"),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    repeats: int = 7,
    image_size: int = 224,
    log=print,
) -> list[dict[str, object]]:
  """Every (layer, dtype, shape) comparison; one dict per form."""
  rng = np.random.default_rng(0)
  sizes = model_layers.spatial_sizes(image_size)
  c1, c2, c3, _, _ = (2 * c for c in model_lib.default_config().conv_features)
  rows = []

  def add(new_rows):
    for r in new_rows:
      times = (
          f"weight gradient {1e3 * r['forward_s']:8.1f} ms"
          if r["layer"].startswith("wgrad")
          else f"forward {1e3 * r['forward_s']:8.1f} ms   forward+backward "
          f"{1e3 * r['forward_backward_s']:8.1f} ms"
      )
      log(
          f"{r['layer']:12s} {r['dtype']:8s} {str(r['shape'][0]):20s} "
          f"{r['form']:15s} {times}   gradient difference "
          f"{r['gradient_difference']:.1e}"
      )
    rows.extend(new_rows)

  for dtype in dtypes:
    cast = lambda a: jnp.asarray(a, dtype)
    if "pool" in layers:
      # Post-ReLU inputs (exact zeros, like the model's) of pool1, 2, 5.
      for size, channels in (
          (sizes["conv1"], c1),
          (sizes["conv2"], c2),
          (sizes["conv5"], c2),
      ):
        x = cast(
            np.maximum(rng.normal(size=(batch_size, size, size, channels)), 0)
        )
        add(
            compare_layer(
                "pool",
                dict(
                    reduce_window=reduce_window_pool,
                    slice_max_pool=slice_max_pool,
                ),
                [x],
                repeats,
                relative=False,
            )
        )
    if "lrn" in layers:
      for size, channels in ((sizes["conv1"], c1), (sizes["conv2"], c2)):
        x = cast(
            np.maximum(
                rng.normal(size=(batch_size, size, size, channels)) * 50, 0
            )
        )
        add(
            compare_layer(
                "lrn",
                dict(
                    reduce_window=model_lrn,
                    shifted_slices=shifted_slices_lrn,
                    banded_matmul=banded_matmul_lrn,
                ),
                [x],
                repeats,
            )
        )
    if "conv1" in layers:
      x = cast(rng.normal(size=(batch_size, image_size, image_size, 3)))
      kernel = cast(rng.normal(size=(11, 11, 3, c1)) * 0.01)
      add(
          compare_layer(
              "conv1",
              dict(strided=strided_conv1, space_to_depth=space_to_depth_conv1),
              [x, kernel],
              repeats,
              argnums=1,
          )
      )
    if "wgrad" in layers:
      pad = model_layers.conv1_padding(image_size)
      cases = dict(  # Per tower for conv2 and conv4, like the model.
          conv1=((image_size, 3), (11, 11, 3, c1), 4, ((0, pad), (0, pad))),
          conv2=(
              (sizes["conv2"], c1 // 2),
              (5, 5, c1 // 2, c2 // 2),
              1,
              ((2, 2), (2, 2)),
          ),
          conv3=((sizes["conv3"], c2), (3, 3, c2, c3), 1, ((1, 1), (1, 1))),
          conv4=(
              (sizes["conv4"], c3 // 2),
              (3, 3, c3 // 2, c3 // 2),
              1,
              ((1, 1), (1, 1)),
          ),
      )
      for name, (
          (size, channels),
          kernel_shape,
          stride,
          padding,
      ) in cases.items():
        x = cast(rng.normal(size=(batch_size, size, size, channels)))
        out = model_layers.conv_out_size(
            size + sum(padding[0]), kernel_shape[0], stride
        )
        dy = cast(rng.normal(size=(batch_size, out, out, kernel_shape[-1])))
        reference = None
        for form, fn in dict(
            xla=xla_weight_gradient, im2col=im2col_weight_gradient
        ).items():
          fn = _jit(
              functools.partial(
                  fn, kernel_shape=kernel_shape, stride=stride, padding=padding
              )
          )
          grad = fn(x, dy)
          reference = grad if reference is None else reference
          add(
              [
                  dict(
                      layer=f"wgrad {name}",
                      form=form,
                      shape=[list(x.shape), list(dy.shape)],
                      dtype=dtype,
                      forward_s=time_call(fn, x, dy, repeats=repeats),
                      forward_backward_s=float("nan"),
                      gradient_difference=_max_difference(
                          grad, reference, True
                      ),
                  )
              ]
          )
  return rows


def define_flags() -> None:
  """This tool's flags (defined only when it runs: train_step.py, importable
  beside it, has flags of the same names)."""
  flags.DEFINE_integer("batch_size", 128, "Batch size.")
  flags.DEFINE_list(
      "layers", ["pool", "lrn", "conv1", "wgrad"], "Which comparisons to run."
  )
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "dtypes.")
  flags.DEFINE_integer("repeats", 7, "Timed calls (median).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  unknown = set(f.layers) - {"pool", "lrn", "conv1", "wgrad"}
  if unknown:
    raise cli.UserError(
        f"--layers: unknown {sorted(unknown)}; choose from "
        "pool, lrn, conv1, wgrad."
    )
  print(
      f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax "
      f"{jax.__version__}, batch {f.batch_size}"
  )
  run(
      f.batch_size,
      f.layers,
      f.dtypes,
      f.repeats,
      log=functools.partial(print, flush=True),
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
