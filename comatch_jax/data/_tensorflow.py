"""Lazy, once-only imports of TensorFlow and TFDS for the modules that read files with them
(tfds_source, folder_cache); nothing else in the package imports TensorFlow."""

from __future__ import annotations

import functools
from typing import Any

from absl import logging


@functools.lru_cache(maxsize=None)
def import_tensorflow() -> Any:
    """Imports TensorFlow lazily (once), hiding GPUs from TF (JAX owns the accelerator)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; cannot change now.
        logging.warning("Could not hide GPUs from TensorFlow (already initialised).")
    return tf


@functools.lru_cache(maxsize=None)
def import_tfds() -> Any:
    """Imports TFDS lazily (once), after TensorFlow (see `import_tensorflow`)."""
    import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds
