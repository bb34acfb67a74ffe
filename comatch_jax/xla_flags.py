"""XLA:CPU flags comatch_jax's entry points apply; importing this module changes nothing.

XLA's CPU backend in jaxlib 0.10 sends convolutions, element-wise ops and reductions to
YNNPACK by default. On the 2-core AMD EPYC (AVX-512) machine this project is developed on
that made a CoMatch step 2-3x slower than XLA's own emitters (experiments/RESULTS.md,
"CPU step"), so the entry points (`comatch_jax.main`, `experiments/benchmark.py`) keep
YNNPACK for dots only. The flag has no effect on GPU/TPU computations. Note (RESULTS.md):
under it XLA:CPU computes one test-only program (per-device BatchNorm emulated on one
device) wrongly; real runs match XLA's defaults.
"""

from __future__ import annotations

import os

DEFAULT_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"
# jaxlib versions the flag was measured on (an unknown flag aborts XLA).
MEASURED_JAXLIB = (0, 10)


def apply_default_cpu_flags() -> bool:
    """Adds DEFAULT_CPU_FLAG to os.environ['XLA_FLAGS']; returns whether it did.

    Must run before JAX starts its CPU backend (the first computation or device query).
    Leaves XLA_FLAGS alone when it already sets a YNNPACK fusion type, when
    COMATCH_JAX_KEEP_XLA_FLAGS=1, and on jaxlib versions other than MEASURED_JAXLIB.
    Raises nothing: a missing jaxlib or an unusual version string changes nothing.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("COMATCH_JAX_KEEP_XLA_FLAGS") == "1" or "ynn_fusion_type" in flags:
        return False
    try:
        from importlib.metadata import version

        major, minor = (int(part) for part in version("jaxlib").split(".")[:2])
    except Exception:  # jaxlib missing or an unusual version string: change nothing
        return False
    if (major, minor) != MEASURED_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {DEFAULT_CPU_FLAG}".strip()
    return True
