import os
import sys
import tempfile

# Tests import shared helpers from each other (e.g. train_test.tiny_config).
sys.path.insert(0, os.path.dirname(__file__))

# In-process tests run under the XLA:CPU flag comatch_jax's entry points apply (faster
# convolutions on CPU), set before any test starts JAX's backend. Most of a cold suite's time
# is XLA:CPU compiling small programs, so tests (and the processes they start, which inherit
# os.environ) also compile with LLVM at -O1 without its expensive passes: about a third less
# compile time, and bit-identical states and losses in the runs compared (experiments/
# RESULTS.md, "Test suite time"). Only on the measured jaxlib: XLA aborts on unknown flags.
from comatch_jax import cli  # noqa: E402

COMPILE_FASTER = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
cli.apply_default_cpu_flags()
_flags = os.environ.get("XLA_FLAGS", "")
if cli.measured_jaxlib() and COMPILE_FASTER not in _flags:  # xdist's workers inherit it
    os.environ["XLA_FLAGS"] = f"{_flags} {COMPILE_FASTER}".strip()

# Most of the suite's time is XLA compilation, and many tests (and the subprocesses the
# kill/resume and multi-host tests start, which inherit os.environ) compile the same tiny
# programs. JAX's persistent compilation cache turns those repeats into disk reads: on the
# 2-core CI machine train_test.py alone went from 145 s to 87 s cold, 31 s warm. A cache hit
# returns the executable the same compilation would have produced, so no result changes.
# Set JAX_COMPILATION_CACHE_DIR yourself to move the cache, or to "" to switch it off.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "comatch_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# pytest-xdist (--dist=loadscope) gives a worker one whole module at a time, by default the
# modules with the most tests first, which puts the few slow ones last, where one worker may
# be left running them alone. Longest first instead (pyproject.toml turns xdist's order off):
# these modules took the most time (compiling, starting processes); the others keep their order.
SLOWEST_MODULES = (
    "methods_test.py",
    "experiments_test.py",
    "kill_resume_test.py",
    "multihost_test.py",
    "train_test.py",
    "models_test.py",
    "train_step_test.py",
    "multi_device_test.py",
    "presets_test.py",
    "pretrained_test.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
