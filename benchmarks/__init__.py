"""Benchmarks and profiling of alexnet_jax: tools, not part of the package.

Run from the repository root, e.g. `python -m benchmarks.train_step`; see
benchmarks/README.md.
"""
