r"""Evaluates trained models: `python -m alexnet_jax.evaluate`.

  python -m alexnet_jax.evaluate --workdir=workdirs/demo \
      [--workdir=workdirs/demo_seed1 ...] [--split=validation] \
      [--crops=center,ten] [--output=results.json]
  python -m alexnet_jax.evaluate --npz=weights.npz \
      --config=configs/ilsvrc2010.py [--input_channels=bgr]

A workdir is evaluated at its latest checkpoint with the config saved in it
(`config.json`), on a mesh of this machine's devices (any mesh: a model
trained on 2 devices evaluates on 1). Several workdirs (and/or an .npz) form
an ensemble that averages their softmax outputs, like the paper's averaged
CNNs (§6). Top-1/top-5 errors are printed and, with --output, written as
JSON.
"""

from collections.abc import Sequence
import json
import os
import zipfile

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import config_validation
from alexnet_jax import eval_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import weights
from alexnet_jax.data import release

_WORKDIRS = flags.DEFINE_multi_string(
    "workdir",
    None,
    "Training workdir(s); several = an ensemble that "
    "averages their softmax outputs.",
)
_NPZ = flags.DEFINE_string("npz", None, "Weights in the Caffe layout (.npz).")
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config of the --npz model (and its data).",
    lock_config=True,
)
_CHANNELS = flags.DEFINE_enum(
    "input_channels",
    "rgb",
    ["rgb", "bgr"],
    "Channel order the --npz conv1 expects.",
)
_SPLIT = flags.DEFINE_string("split", "validation", "Split to evaluate.")
_CROPS = flags.DEFINE_list(
    "crops", "center,ten", "center (1 crop) and/or ten (the 10 patches)."
)
_MESH_DATA = flags.DEFINE_integer("mesh_data", -1, "Data axis of the mesh.")
_MESH_MODEL = flags.DEFINE_integer(
    "mesh_model", 1, "Model axis of the mesh (any, whatever trained it)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results (JSON).")


def main(argv: Sequence[str]) -> None:
  # Imported here: the data need TensorFlow, the library functions above
  # do not.
  from alexnet_jax import run_data  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIRS.value and not _NPZ.value:
    raise cli.UserError("give --workdir (one or more) and/or --npz.")
  for c in _CROPS.value:
    if c not in eval_lib.CROPS:
      raise cli.UserError(f"--crops: {c!r} is not one of {eval_lib.CROPS}.")
  if _NPZ.value and cli.config_value(_CONFIG) is None:
    raise cli.UserError("--npz needs --config (the model it fits).")
  if _NPZ.value and not os.path.isfile(_NPZ.value):
    raise cli.UserError(f"--npz={_NPZ.value}: no such file.")
  configs = [cli.config_value(_CONFIG)] if _NPZ.value else []
  configs += [eval_lib.load_workdir_config(w) for w in _WORKDIRS.value or ()]
  for config in configs:
    config_validation.validate_model(config)
  config_validation.validate_mean_image_file(configs[0])
  eval_lib.check_ensemble(configs)
  cli.setup_devices(configs[0])
  mesh = parallel.make_mesh(
      _MESH_DATA.value,
      _MESH_MODEL.value,
      num_towers=configs[0].model.num_towers,
  )
  members = []
  if _NPZ.value:
    shapes = model_lib.param_shapes(configs[0].model)
    try:
      host = weights.import_npz(_NPZ.value, shapes, _CHANNELS.value)
    except weights.WeightsError as e:
      raise cli.UserError(f"--npz={_NPZ.value}: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise cli.UserError(
          f"--npz={_NPZ.value} is not a readable .npz file ({e}). Give "
          "weights written by alexnet_jax.weights.export_npz."
      ) from None
    shardings = parallel.named_shardings(mesh, parallel.param_specs(shapes))
    members.append((configs[0], jax.device_put(host, shardings)))
  for workdir in _WORKDIRS.value or ():
    config = configs[len(members)]
    params, step = eval_lib.restore_params(workdir, config, mesh)
    logging.info("%s: restored step %d", workdir, step)
    members.append((config, params))
  try:
    data = run_data.Data(configs[0], mesh)
    results = {
        _SPLIT.value: {
            c: eval_lib.evaluate(
                members, mesh, data.eval_batches(_SPLIT.value, c)
            )
            for c in _CROPS.value
        }
    }
  except release.Ilsvrc2010Error as e:  # Preparing the data.
    raise cli.UserError(str(e)) from None
  print(eval_lib.format_table(results))
  if _OUTPUT.value and jax.process_index() == 0:
    with open(_OUTPUT.value, "w") as f:
      json.dump(
          dict(workdirs=_WORKDIRS.value or [], npz=_NPZ.value, results=results),
          f,
          indent=2,
      )
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
