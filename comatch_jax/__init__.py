"""comatch_jax: semi-supervised image classification (CoMatch and friends) in JAX/Flax."""

import os

# XLA's CPU backend in jaxlib 0.10 sends convolutions, element-wise ops and reductions to
# YNNPACK by default. On the 2-core AMD EPYC (AVX-512) machine this project is developed on
# that made a CoMatch step 2-3x slower than XLA's own emitters (experiments/RESULTS.md,
# "CPU step"), so YNNPACK is kept for dots only. The flag must be set before JAX starts its
# CPU backend; it is left alone when XLA_FLAGS already sets it, when
# COMATCH_JAX_KEEP_XLA_FLAGS=1, and on jaxlib versions it was not measured on (an unknown
# flag aborts XLA). It has no effect on GPU/TPU computations.
_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"


def _set_default_xla_cpu_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("COMATCH_JAX_KEEP_XLA_FLAGS") == "1" or "ynn_fusion_type" in flags:
        return
    try:
        from importlib.metadata import version

        major, minor = (int(part) for part in version("jaxlib").split(".")[:2])
    except Exception:  # jaxlib missing or an unusual version string: change nothing
        return
    if (major, minor) == (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {_CPU_FLAG}".strip()


_set_default_xla_cpu_flags()
