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

import contextlib
import threading

from absl import flags, logging
from ml_collections import config_flags

from comatch_jax import command_line, xla_flags
from comatch_jax.trainer import stopping as termination

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


def _cluster_flags() -> dict | None:
    """The jax.distributed.initialize arguments when any multi-host flag is given, else None."""
    cluster = {
        "coordinator_address": FLAGS.coordinator_address,
        "num_processes": FLAGS.num_processes,
        "process_id": FLAGS.process_id,
    }
    if not FLAGS.distributed and all(value is None for value in cluster.values()):
        return None
    return cluster


def initialize_distributed(cluster: dict) -> None:
    """jax.distributed.initialize (before any JAX work), which starts JAX's preemption
    service: from then on a SIGTERM to any process stops all of them at the same step."""
    import jax

    # In a thread, the main thread waiting in short slices: Python runs signal handlers only
    # between bytecodes of the main thread, so a call blocked waiting for a missing peer
    # would otherwise swallow every signal (a second Ctrl-C or SIGTERM must end it at once).
    failure = []

    def initialize():
        try:
            jax.distributed.initialize(**cluster)
        except BaseException as error:  # re-raised in the main thread
            failure.append(error)

    logging.info(
        "Connecting to the other processes (jax.distributed.initialize; coordinator %s).",
        cluster["coordinator_address"] or "detected from the cluster",
    )
    thread = threading.Thread(target=initialize, name="jax.distributed.initialize", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if failure:
        raise failure[0]
    logging.info(
        "Process %d of %d; devices: %d here, %d in all.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


# A SIGTERM outside the training loop (one process) says so in one line, then ends the
# program by SIGTERM (exit status 143); several processes leave SIGTERM to JAX's preemption
# service.
TERMINATED = (
    "Terminated (SIGTERM) outside the training loop; the workdir holds only complete "
    "checkpoints. Rerun the same command to continue."
)


def _train() -> None:
    cluster = _cluster_flags()
    if cluster:
        _train_in(cluster)
    else:
        with termination.OneLineOnSigterm(TERMINATED):
            _train_in(cluster)


def _train_in(cluster: dict | None) -> None:
    # Several processes: a signal before JAX's preemption service is up is held and handed
    # to it, so that every process stops with a checkpoint (not this one alone).
    held = termination.HeldForPreemptionService() if cluster else contextlib.nullcontext()
    with held:
        if cluster:
            logging.info("Starting process %s of a multi-process run.", cluster["process_id"])
        # Before JAX starts its CPU backend (nothing above has run a computation).
        if xla_flags.apply_default_cpu_flags():
            logging.info("XLA_FLAGS += %s (comatch_jax's CPU default)", xla_flags.DEFAULT_CPU_FLAG)
        from comatch_jax.trainer import train  # imports JAX's model code only now

        # tf.data must never take GPU memory from JAX.
        import tensorflow as tf  # file reading only

        tf.config.set_visible_devices([], "GPU")
        if cluster:
            initialize_distributed(cluster)
    logging.info("Config:\n%s", FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


# Ctrl-C outside the training loop (start-up, compiling, the final evaluation) is one line:
# the loop's handler, which checkpoints first, is not installed there, and Orbax's saves are
# atomic, so the workdir holds only complete checkpoints (or none yet).
main = command_line.entry_point(
    _train,
    interrupted="Interrupted (Ctrl-C) outside the training loop; the workdir holds only "
    "complete checkpoints. Rerun the same command to continue.",
)
# The entry point's flag parsing (a bad override is one line); kept here for callers.
parse_flags = command_line.parse_flags


if __name__ == "__main__":
    command_line.run(main)
