"""Shared test set-up.

JAX must see its fake CPU devices before it initializes a backend, so this
file configures them first, before any test module imports JAX code. Tests
that need a different device count run in a subprocess (see
`run_in_subprocess` in tests/helpers.py).
"""
import os

# Four fake CPU devices: enough for the 2-tower mesh and for data x model =
# 2 x 2. Must happen before the first JAX computation.
NUM_FAKE_DEVICES = 4
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
jax.config.update("jax_platforms", "cpu")
