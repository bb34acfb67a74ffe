"""Entry point: python -m comatch_jax.main --config=configs/comatch.py --workdir=/tmp/run.

Any config field can be overridden, e.g. --config.num_labels=250; presets are chosen after
a colon: --config=configs/comatch.py:cifar10_40.
"""

import ast
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from comatch_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # tf.data must never take GPU memory from JAX.
    import tensorflow as tf  # file reading only

    tf.config.set_visible_devices([], "GPU")
    logging.info("Config:\n%s", FLAGS.config)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, OSError, FloatingPointError) as error:
        # Bad input (config, data, workdir) or a numerical fault: one line, non-zero exit.
        logging.error("%s: %s", type(error).__name__, error)
        sys.exit(f"error: {error}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a config override naming a missing field (or a bad value) turned
    into one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as error:
        detail = str(error.args[0] if error.args else error)
        if isinstance(error, AttributeError):  # ml_collections: a field that does not exist
            try:
                detail = "no such config field " + ast.literal_eval(detail)
            except (ValueError, SyntaxError):
                pass
        detail = " ".join(detail.split())
        sys.exit(f"error: bad command-line flag or config override: {detail}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
