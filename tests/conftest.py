import os
import sys

# Tests import shared helpers from each other (e.g. train_test.tiny_config).
sys.path.insert(0, os.path.dirname(__file__))

# In-process tests run under the XLA:CPU flag comatch_jax's entry points apply (faster
# convolutions on CPU), before any test starts JAX's backend.
from comatch_jax import xla_flags  # noqa: E402

xla_flags.apply_default_cpu_flags()
