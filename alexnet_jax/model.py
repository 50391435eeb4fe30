"""The paper's two-tower AlexNet (Krizhevsky et al. 2012, §3, Figure 2).

Every layer holds `num_towers` towers (2 in the paper). A device runs the
`towers_local` towers it holds; with the towers laid over the mesh's `model`
axis (see parallel.py) a device holds one tower, without it both. The
activations of the local towers are kept side by side in the channel (or
unit) axis, tower-major; a tower-local layer is one convolution per tower on
its channel block, the "groups" of cuda-convnet.

Parameter layout (T = num_towers; every parameter but fc8's bias has T as its
leading axis and is sharded over `model`):

  conv1/kernel [T, 11, 11, 3, 48]      input: the whole image
  conv2/kernel [T, 5, 5, 48, 128]      input: own tower's conv1
  conv3/kernel [T, 3, 3, 256, 192]     input: both towers' conv2 (gathered)
  conv4/kernel [T, 3, 3, 192, 192]     input: own tower (absent with
                                       remove_conv4)
  conv5/kernel [T, 3, 3, 192, 128]     input: own tower
  fc6/kernel   [T, 6*6*128, 4096]      rows: own tower's pool5 (h, w, c);
                                       columns: all fc6 units, tower-major
  fc7/kernel   [T, 4096, 2048]         rows: all fc6 units; columns: own units
  fc8/kernel   [T, 2048, 1000]         rows: own fc7 units
  */bias       [T, features]           own units; fc8/bias [1000] replicated

fc6 and fc8 are stored by input rows because their cross-tower exchange is a
sum of partial products (parallel.py explains the byte counts); the function
is the paper's either way.

The paper's comparisons are config fields (configs/ilsvrc2010.py names them):
`num_towers=1` with conv5/fc widths doubled (the one-GPU net, §3.2),
`lrn.enabled` (§3.3), `pool_window` (§3.4), `dropout_rate` (§4.2),
`activation` (§3.1) and `remove_conv4` (§7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from alexnet_jax import layers
from alexnet_jax import parallel

Array = jax.Array

# Names of the layers in order.
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")


def default_config() -> ml_collections.ConfigDict:
  """The paper's network (§3, Figure 2). Configs override fields of this."""
  c = ml_collections.ConfigDict()
  c.num_classes = 1000
  c.num_towers = 2
  # Per-tower widths (§3.5): the paper's totals are twice these.
  c.conv_features = (48, 128, 192, 192, 128)
  c.fc_features = (2048, 2048)
  # 224 is the paper's crop (§3.5); conv1 then rounds its output size up
  # like the authors' code (55x55). 227 is Caffe's crop, which gives 55x55
  # unpadded (docs/paper.md "224 or 227").
  c.image_size = 224
  # Local response normalization (§3.3). convention="paper":
  #   b = a / (k + alpha * sum a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75.
  # convention="caffe" (Caffe, PyTorch, cuda-convnet2) divides alpha by n
  # (docs/paper.md "LRN");
  # Caffe's reference AlexNet also uses k=1.
  # enabled=False removes both LRN layers (the §3.3 comparison).
  # across_towers=False: the sum runs over the maps of the layer's own tower
  # (§3.3 with the towers of §3.5: a GPU normalizes the maps it holds).
  # True: over all the layer's maps, both towers, as Caffe's bvlc_alexnet
  # (its LRN layer has no groups); the n // 2 maps nearest the tower
  # boundary then see maps of the other tower, sent between the devices
  # that hold the towers (parallel.neighbour_channels; docs/paper.md "LRN").
  c.lrn = ml_collections.ConfigDict(
      dict(
          enabled=True,
          convention="paper",
          k=2.0,
          n=5,
          alpha=1e-4,
          beta=0.75,
          across_towers=False,
      )
  )
  # Overlapping pooling (§3.4): window 3, stride 2; 2/2 is the ablation.
  c.pool_window = 3
  c.pool_stride = 2
  # "relu" (§3.1) or "tanh": the nonlinearity after every conv and fc6/fc7.
  c.activation = "relu"
  # §7: "removing any of the middle layers results in a loss of about 2%".
  # True removes conv4 (conv5 then reads conv3 within its tower).
  c.remove_conv4 = False
  c.dropout_rate = 0.5  # §4.2, after fc6 and fc7; 0 removes it.
  # §4.2 "paper": zero each output with probability dropout_rate in
  # training, no rescaling; at test time multiply by 1 - dropout_rate (0.5).
  # "inverted" (Caffe, PyTorch, flax): divide the kept outputs by
  # 1 - dropout_rate in training, identity at test. Both describe the same
  # functions (halving fc7's and fc8's weights converts one to the other),
  # but not the same training run: with the paper's N(0, 0.01^2) init and
  # learning rate, inverted dropout doubles what fc7 and fc8 see in
  # training and so changes their gradient steps. Weights trained with
  # inverted dropout (e.g. Caffe's) must be evaluated with "inverted"
  # (docs/paper.md "Dropout's rule").
  c.dropout_scaling = "paper"
  # "paper": N(0, 0.01^2) weights, bias 1 in conv2, conv4, conv5, fc6, fc7
  # (§5). "caffe": bvlc_alexnet's fc6/fc7 std 0.005 and biases 0.1.
  c.init = "paper"
  # Not in the paper: multiply each layer's weight std by
  # sqrt(paper fan-in / this fan-in), so that a reduced-width model (demo,
  # tests) starts with the paper's per-layer activation scale instead of
  # stalling at ln(num_classes). No effect at the paper's widths.
  c.init_scale_to_width = False
  # Compute dtype of convolutions and matmuls; parameters stay float32 and
  # LRN, softmax and the loss are computed in float32.
  c.dtype = "float32"
  return c


def _init_constants(init: str) -> dict[str, tuple[float, float]]:
  """(weight std, bias value) per layer for an init scheme, at the paper's
  widths (`layer_init` applies `init_scale_to_width`)."""
  if init == "paper":
    # §5: "We initialized the weights in each layer from a zero-mean Gaussian
    # distribution with standard deviation 0.01. We initialized the neuron
    # biases in the second, fourth, and fifth convolutional layers, as well as
    # in the fully-connected hidden layers, with the constant 1."
    std = dict.fromkeys(CONV_LAYERS + FC_LAYERS, 0.01)
    bias = dict(
        conv1=0.0,
        conv2=1.0,
        conv3=0.0,
        conv4=1.0,
        conv5=1.0,
        fc6=1.0,
        fc7=1.0,
        fc8=0.0,
    )
  elif init == "caffe":
    # Caffe's bvlc_alexnet: avoids the flat loss at ln(1000) some setups hit
    # with the paper's init (docs/paper.md "Other choices the paper leaves
    # open").
    std = dict.fromkeys(CONV_LAYERS + FC_LAYERS, 0.01)
    std.update(fc6=0.005, fc7=0.005)
    bias = dict(
        conv1=0.0,
        conv2=0.1,
        conv3=0.0,
        conv4=0.1,
        conv5=0.1,
        fc6=0.1,
        fc7=0.1,
        fc8=0.0,
    )
  else:
    raise ValueError(f"model.init={init!r}: use 'paper' or 'caffe'.")
  return {k: (std[k], bias[k]) for k in std}


def _fan_ins(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Inputs per unit of each layer (all towers' inputs where a layer reads
  both: conv3, fc6, fc7, fc8)."""
  towers = config.num_towers
  c1, c2, c3, c4, c5 = config.conv_features
  f6, f7 = config.fc_features
  pool5 = layers.spatial_sizes(
      config.image_size, config.pool_window, config.pool_stride
  )["pool5"]
  fan_ins = dict(
      conv1=11 * 11 * 3,
      conv2=5 * 5 * c1,
      conv3=3 * 3 * towers * c2,
      conv4=3 * 3 * c3,
      conv5=3 * 3 * c4,
      fc6=towers * pool5 * pool5 * c5,
      fc7=towers * f6,
      fc8=towers * f7,
  )
  if config.remove_conv4:  # conv5 reads conv3 (§7).
    del fan_ins["conv4"]
    fan_ins["conv5"] = 3 * 3 * c3
  return fan_ins


def layer_init(
    config: ml_collections.ConfigDict,
) -> dict[str, tuple[float, float]]:
  """(weight std, bias value) of each layer of `config`: the one source of
  the initial distributions (`init_params` and `AlexNet.init` read it).

  `config.init` names the scheme (§5, or Caffe's); with
  `init_scale_to_width` each std is multiplied by sqrt(paper fan-in / this
  fan-in), which changes nothing at the paper's widths.
  """
  consts = _init_constants(config.init)
  fan_ins = _fan_ins(config)
  if config.init_scale_to_width:
    paper = _fan_ins(default_config())
    return {
        name: (std * math.sqrt(paper[name] / fan_ins[name]), bias)
        for name, (std, bias) in consts.items()
        if name in fan_ins
    }
  return {name: consts[name] for name in fan_ins}


DROPOUT_SCALINGS = ("paper", "inverted")


class AlexNet(nn.Module):
  """The paper's network, on the `towers_local` towers this device holds.

  Make it with `build(config, mesh)`: `config` is the model config, checked
  and completed by `settings` (the module reads every setting from it and
  restates none), `towers_local` and the mesh axis names come from the mesh.
  Without a mesh, `towers_local == config.num_towers` and the axes are None:
  one device computes every tower. Inside shard_map (see `parallel`), the
  module communicates only at conv3, fc6, fc7 and fc8 (and at norm1 and
  norm2 with `lrn.across_towers`, Caffe's LRN).

  Call with images [B, S, S, 3] (S = image_size), returns float32 logits
  [B, num_classes]. `train=True` draws dropout masks and needs a 'dropout'
  rng; `train=False` applies dropout's test-time rule (x 0.5 in "paper").

  `AlexNet.init` draws each parameter from its own flax RNG stream;
  `init_params`, which the program uses, draws all kernels from one stream.
  Both take each layer's distribution from `layer_init`.
  """

  config: ml_collections.FrozenConfigDict
  towers_local: int
  model_axis: str | None = None
  data_axis: str | None = None

  def _lrn(self, x: Array) -> Array:
    lrn = self.config.lrn
    if not lrn.enabled:
      return x
    return layers.local_response_norm(
        x,
        self.towers_local,
        convention=lrn.convention,
        k=lrn.k,
        n=lrn.n,
        alpha=lrn.alpha,
        beta=lrn.beta,
        across_towers=lrn.across_towers,
        axis_name=self.model_axis,
    )

  def _pool(self, x: Array) -> Array:
    w, s = self.config.pool_window, self.config.pool_stride
    return nn.max_pool(x, (w, w), strides=(s, s), padding="VALID")

  def _dropout(self, x: Array, train: bool) -> Array:
    """Dropout (§4.2) with a mask that differs per step, tower and shard.

    "paper": training keeps each output with probability keep = 1 - rate,
    unscaled; test multiplies every output by keep. "inverted": training
    divides the kept outputs by keep; test is the identity.
    """
    if self.config.dropout_rate == 0.0:
      return x
    keep = 1.0 - self.config.dropout_rate
    paper = self.config.dropout_scaling == "paper"
    if not train:
      # §4.2: "At test time, we use all the neurons but multiply their
      # outputs by 0.5".
      return x * jnp.asarray(keep, x.dtype) if paper else x
    key = self.make_rng("dropout")  # Differs per step and per layer.
    key = jax.random.fold_in(key, parallel.shard_index(self.data_axis))
    first = parallel.tower_offset(self.model_axis, self.towers_local)
    towers = first + jnp.arange(self.towers_local)
    batch, units = x.shape
    per_tower = units // self.towers_local
    masks_T = jax.vmap(
        lambda t: jax.random.bernoulli(
            jax.random.fold_in(key, t), keep, (batch, per_tower)
        )
    )(towers)
    mask = jnp.moveaxis(masks_T, 0, 1).reshape(batch, units)
    return jnp.where(mask, x if paper else x / keep, 0).astype(x.dtype)

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    config = self.config
    size = config.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(
          f"AlexNet expects images [batch, {size}, "
          f"{size}, 3]; got {images.shape}. Set model.image_size "
          "to the crop size of the input pipeline."
      )
    consts = layer_init(config)
    towers, dt = self.towers_local, jnp.dtype(config.dtype)
    act = layers.ACTIVATIONS[config.activation]
    c1, c2, c3, c4, c5 = config.conv_features
    f6, f7 = config.fc_features

    def conv(name, features, k, shared, stride=1, padding="SAME"):
      std, bias = consts[name]
      return layers.TowerConv(
          features,
          k,
          towers,
          shared,
          stride=stride,
          padding=padding,
          weight_std=std,
          bias_value=bias,
          dtype=dt,
          name=name,
      )

    def fc(name, kernel_shape, bias_shape):
      std, bias = consts[name]
      return layers.DenseParams(
          kernel_shape, bias_shape, std, bias, name=name
      )()

    # conv1 reads the whole image in both towers (§3.5). Authors' output-size
    # rounding: pad only the bottom/right edge (224 -> 55, 227 -> 55;
    # docs/paper.md "224 or 227").
    pad = layers.conv1_padding(size)
    x = conv("conv1", c1, 11, True, 4, ((0, pad), (0, pad)))(images)
    x = self._pool(self._lrn(act(x)))  # §3.3: LRN after ReLU.
    x = conv("conv2", c2, 5, False)(x)
    x = self._pool(self._lrn(act(x)))
    # conv3 reads both towers' conv2 maps: the first communication.
    x = parallel.gather_towers(x, self.model_axis, axis=-1)
    x = act(conv("conv3", c3, 3, True)(x))
    if not config.remove_conv4:
      x = act(conv("conv4", c4, 3, False)(x))
    x = act(conv("conv5", c5, 3, False)(x))
    x = self._pool(x)

    # fc6: each tower multiplies its own pool5 (flattened h, w, c) by its
    # rows of the fc6 matrix; the partial sums are reduced across towers and
    # each device keeps the units of its towers.
    batch, h, w, _ = x.shape
    # Rows (tower, h, w, c): the order of the local towers' fc6 kernel rows.
    x_BI = x.reshape(batch, h, w, towers, c5).transpose(0, 3, 1, 2, 4)
    x_BI = x_BI.reshape(batch, towers * h * w * c5)
    k6, b6 = fc(
        "fc6", (towers, h * w * c5, config.num_towers * f6), (towers, f6)
    )
    # Each matmul runs in its layer's name scope: profiles read the layer
    # from the op name (benchmarks/op_profile.py), as for the conv modules.
    # The fc matmuls are 2-D over the kernels' own row order: as einsums
    # over a tower axis, XLA:CPU copied the fc6 and fc7 kernels in and out of
    # another layout every step (benchmarks/README.md).
    with jax.named_scope("fc6"):
      partial = x_BI.astype(dt) @ k6.reshape(-1, k6.shape[-1]).astype(dt)
    x = parallel.scatter_tower_sum(partial, self.model_axis, axis=1)
    x = self._dropout(act(x + b6.reshape(-1).astype(dt)), train)

    # fc7: every unit reads all of fc6 (gathered); each tower computes its own
    # units.
    x = parallel.gather_towers(x, self.model_axis, axis=1)
    k7, b7 = fc("fc7", (towers, config.num_towers * f6, f7), (towers, f7))
    with jax.named_scope("fc7"):
      x = jnp.concatenate(
          [x.astype(dt) @ k7[t].astype(dt) for t in range(towers)], axis=-1
      )
    x = act(x + b7.reshape(-1).astype(dt))
    # The last hidden layer, Figure 4's feature space (`make_features`).
    self.sow("intermediates", "features", x)
    x = self._dropout(x, train)

    # fc8: each tower's fc7 units times its rows of the fc8 matrix; the
    # partial logits are summed across towers on every device.
    k8, b8 = fc("fc8", (towers, f7, config.num_classes), (config.num_classes,))
    with jax.named_scope("fc8"):
      partial = x.astype(dt) @ k8.reshape(-1, k8.shape[-1]).astype(dt)
    logits = parallel.sum_towers(partial.astype(jnp.float32), self.model_axis)
    return logits + b8


# Fields added after the first release, with the values the runs of a
# workdir whose saved config.json lacks them used.
_LEGACY_FIELDS = dict(
    activation="relu",
    dropout_scaling="inverted",
    remove_conv4=False,
    init_scale_to_width=False,
)


def settings(
    config: ml_collections.ConfigDict,
) -> ml_collections.FrozenConfigDict:
  """`config` (a `default_config()`-shaped model config), checked and
  completed: what `AlexNet` reads. Raises ValueError naming a bad field."""
  if config.num_towers < 1:
    raise ValueError(f"model.num_towers={config.num_towers} must be >= 1.")
  if len(config.conv_features) != 5 or len(config.fc_features) != 2:
    raise ValueError(
        "model.conv_features needs 5 per-tower widths and model.fc_features "
        f"2; got {tuple(config.conv_features)} and "
        f"{tuple(config.fc_features)}."
    )
  sizes = layers.spatial_sizes(
      config.image_size, config.pool_window, config.pool_stride
  )
  if min(sizes.values()) < 1:
    raise ValueError(
        f"model.image_size={config.image_size} is too small for 3 poolings "
        f"of window {config.pool_window} / stride {config.pool_stride}: "
        f"spatial sizes {sizes}."
    )
  if config.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"model.dtype={config.dtype!r}: float32 or bfloat16.")
  complete = ml_collections.ConfigDict(config.to_dict())
  for name, value in _LEGACY_FIELDS.items():
    if name not in complete:
      complete[name] = value
  if "enabled" not in complete.lrn:
    complete.lrn.enabled = True
  if "across_towers" not in complete.lrn:
    complete.lrn.across_towers = False
  if not isinstance(complete.lrn.across_towers, bool):
    raise ValueError(
        f"model.lrn.across_towers="
        f"{complete.lrn.across_towers!r}: True or False."
    )
  if complete.activation not in layers.ACTIVATIONS:
    raise ValueError(
        f"model.activation={complete.activation!r}: one of "
        f"{list(layers.ACTIVATIONS)}."
    )
  if complete.dropout_scaling not in DROPOUT_SCALINGS:
    raise ValueError(
        f"model.dropout_scaling={complete.dropout_scaling!r}: "
        f"one of {list(DROPOUT_SCALINGS)}."
    )
  if not 0.0 <= config.dropout_rate < 1.0:
    raise ValueError(
        f"model.dropout_rate={config.dropout_rate} must be in [0, 1)."
    )
  _init_constants(config.init)  # Validates the name.
  return ml_collections.FrozenConfigDict(complete)


def build(
    config: ml_collections.ConfigDict, mesh: Mesh | None = None
) -> AlexNet:
  """The module for `config` (a `default_config()`-shaped ConfigDict).

  With a mesh, the module is the per-device program for `parallel.shard_map`
  (it holds num_towers / mesh.model towers and communicates over the mesh
  axes); without one, it holds every tower and runs on one device.
  """
  config = settings(config)
  towers_local = parallel.towers_per_device(mesh, config.num_towers)
  if towers_local * (mesh.shape[parallel.MODEL] if mesh else 1) != (
      config.num_towers
  ):
    raise parallel.MeshError(
        f"mesh.model={mesh.shape[parallel.MODEL]} does not divide "
        f"model.num_towers={config.num_towers}."
    )
  return AlexNet(
      config=config,
      towers_local=towers_local,
      model_axis=parallel.tower_axis(mesh),
      data_axis=parallel.DATA if mesh is not None else None,
  )


def init_params(
    config: ml_collections.ConfigDict, rng: Array, mesh: Mesh | None = None
) -> Any:
  """Creates the parameters, directly with their shardings when given a mesh.

  Weights ~ N(0, std^2) and constant biases per `layer_init` (§5). All
  kernels are cut from one normal stream of shape [towers, n]: one RNG op
  (each random op costs seconds of XLA compile time on CPU) that XLA shards
  over `model`, so no device draws more than its towers' share. The values
  do not depend on the mesh. The parameter tree is the module's
  (`AlexNet.init`, which draws from the same distributions, one stream per
  parameter).
  """
  module = build(config, mesh=None)
  images = jax.ShapeDtypeStruct(
      (1, config.image_size, config.image_size, 3), jnp.float32
  )
  shapes = jax.eval_shape(
      lambda x: module.init({"params": jax.random.key(0)}, x), images
  )["params"]
  consts = layer_init(module.config)
  towers = config.num_towers
  sizes = {
      name: math.prod(shapes[name]["kernel"].shape[1:])
      for name in CONV_LAYERS + FC_LAYERS
      if name in shapes
  }

  def init(rng):
    stream = jax.random.normal(rng, (towers, sum(sizes.values())))
    params, offset = {}, 0
    for name, size in sizes.items():
      std, bias = consts[name]
      kernel = stream[:, offset : offset + size] * std
      offset += size
      params[name] = dict(
          kernel=kernel.reshape(shapes[name]["kernel"].shape),
          bias=jnp.full(shapes[name]["bias"].shape, bias, jnp.float32),
      )
    return params

  if mesh is None:
    return jax.jit(init)(rng)
  shardings = parallel.named_shardings(mesh, parallel.param_specs(shapes))
  return jax.jit(init, out_shardings=shardings)(rng)


def make_apply(
    config: ml_collections.ConfigDict, mesh: Mesh | None = None
) -> Callable[..., Array]:
  """Returns `apply(params, images, rng=None, train=False) -> logits`.

  `images` and the returned logits are global arrays (sharded over the mesh's
  data axis when there is a mesh); `params` as made by `init_params`. Call it
  inside `jax.jit`. With `train=True`, `rng` drives dropout.
  """
  module = build(config, mesh)

  def local_apply(params, images, rng):
    rngs = {"dropout": rng} if rng is not None else {}
    return module.apply(
        {"params": params}, images, train=rng is not None, rngs=rngs
    )

  def apply(params, images, rng=None, train=False):
    if train and rng is None:
      raise ValueError("train=True needs an rng for dropout.")
    rng = rng if train else None
    if mesh is None:
      return local_apply(params, images, rng)
    return parallel.shard_model(local_apply, mesh, params, rng)(
        params, images, rng
    )

  return apply


def make_features(
    config: ml_collections.ConfigDict, mesh: Mesh | None = None
) -> Callable[[Any, Array], Array]:
  """Returns `features(params, images) -> [B, num_towers * fc_features[1]]`.

  The last hidden layer, the space of the paper's Figure 4 (§6.1): fc7 after
  its nonlinearity (ReLU), before dropout, in eval mode; 4096 units in the
  paper's model. Units are tower-major (tower 0's first) on every mesh; with
  a mesh the result is sharded over `data` (examples) and the towers'
  `model` axis (units). Call it inside `jax.jit`.
  """
  module = build(config, mesh)

  def local_features(params, images):
    _, state = module.apply(
        {"params": params}, images, train=False, mutable=["intermediates"]
    )
    return state["intermediates"]["features"][0]

  def features(params, images):
    if mesh is None:
      return local_features(params, images)
    axis = parallel.tower_axis(mesh)
    specs = (
        jax.tree.map(lambda _: parallel.P(), params)
        if axis is None
        else parallel.param_specs(params)
    )
    return jax.shard_map(
        local_features,
        mesh=mesh,
        in_specs=(specs, parallel.P(parallel.DATA)),
        out_specs=parallel.P(parallel.DATA, axis),
        check_vma=True,
    )(params, images)

  return features


def param_shapes(config: ml_collections.ConfigDict) -> Any:
  """The parameter tree as ShapeDtypeStructs (nothing is computed)."""
  return jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))


def count_params(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
