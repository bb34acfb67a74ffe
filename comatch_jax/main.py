"""Entry point: python -m comatch_jax.main --config=configs/comatch.py --workdir=/tmp/run.

Any config field can be overridden, e.g. --config.num_labels=250; presets are chosen after
a colon: --config=configs/comatch.py:cifar10_40.

Several hosts (one process each, same command and workdir on a shared disk): add
--distributed (JAX detects SLURM, Open MPI, Kubernetes or Cloud TPU) or name the cluster with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I; the batch is then split
over the devices of all processes (README, "Several hosts").

The log holds one line per event (progress, evaluation, checkpoint, warnings); --verbosity=1
adds the libraries' INFO lines (Orbax, clu, JAX).
"""

import ast
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from comatch_jax import xla_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host: call jax.distributed.initialize() before anything else; with no "
    "--coordinator_address etc. JAX detects the cluster (SLURM, Open MPI, Kubernetes, TPU) "
    "or reads JAX_COORDINATOR_ADDRESS.",
)
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..N-1.")


def initialize_distributed() -> None:
    """jax.distributed.initialize when any multi-host flag is given (before any JAX work)."""
    cluster = {
        "coordinator_address": FLAGS.coordinator_address,
        "num_processes": FLAGS.num_processes,
        "process_id": FLAGS.process_id,
    }
    if not FLAGS.distributed and all(value is None for value in cluster.values()):
        return
    import jax

    jax.distributed.initialize(**cluster)
    logging.info(
        "Process %d of %d; devices: %d here, %d in all.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from comatch_jax import library_logs

    # One line per event; absl's --verbosity=1 shows the libraries' (Orbax, clu, JAX) logs.
    library_logs.quiet_library_logs()
    # Before JAX starts its CPU backend (nothing above has run a computation).
    if xla_flags.apply_default_cpu_flags():
        logging.info("XLA_FLAGS += %s (comatch_jax's CPU default)", xla_flags.DEFAULT_CPU_FLAG)
    from comatch_jax import train  # imports JAX's model code only now

    # tf.data must never take GPU memory from JAX.
    import tensorflow as tf  # file reading only

    tf.config.set_visible_devices([], "GPU")
    initialize_distributed()
    logging.info("Config:\n%s", FLAGS.config)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, OSError, FloatingPointError) as error:
        # Bad input (config, data, workdir) or a numerical fault: one line, non-zero exit.
        logging.error("%s: %s", type(error).__name__, error)
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (start-up, compiling, the final evaluation): the
        # loop's handler, which checkpoints first, is not installed there. Orbax's saves are
        # atomic, so the workdir holds only complete checkpoints (or none yet).
        print(
            "Interrupted (Ctrl-C) outside the training loop; the workdir holds only complete "
            "checkpoints. Rerun the same command to continue.",
            file=sys.stderr,
        )
        sys.exit(130)


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
