"""comatch_jax: semi-supervised image classification (CoMatch and friends) in JAX/Flax.

Importing the package or any of its modules has no side effects: the XLA:CPU flag the
entry points use is applied by `comatch_jax.cli.apply_default_cpu_flags()`.
"""
