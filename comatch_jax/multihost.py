"""Helpers for runs over several processes (hosts); each is a no-op with one process.

The mesh spans every device of every process; process 0 writes the run's files; the others
wait at barriers. A stop on SIGTERM is agreed through JAX's preemption service
(trainer/stopping.py).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh


def data_parallel_mesh() -> Mesh:
    """A 1-D mesh named 'data' over every device of every process (one device: nothing
    changes; several processes after jax.distributed.initialize: the global batch is split
    over all their devices)."""
    return Mesh(np.array(jax.devices()), ("data",))


def is_primary() -> bool:
    """Whether this is process 0, the one that writes the run's files (config, metrics,
    summary); Orbax coordinates the checkpoints itself."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"comatch_jax: {name}")
