"""Entry point: python -m comatch_jax.main --config=configs/comatch.py --workdir=/tmp/run.

Any config field can be overridden, e.g. --config.num_labels=250; presets are chosen after
a colon: --config=configs/comatch.py:cifar10_40. Several hosts (one process each, the same
command and workdir on a shared disk): add --distributed (JAX detects SLURM, Open MPI,
Kubernetes or Cloud TPU), or --coordinator_address=HOST:PORT --num_processes=N
--process_id=I. --verbosity=1 adds the libraries' INFO lines to the log.
"""

from absl import flags, logging
from ml_collections import config_flags

from comatch_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool("distributed", False, "Several hosts: jax.distributed.initialize() first.")
flags.DEFINE_string("coordinator_address", None, "Several hosts: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Several hosts: the number of processes.")
flags.DEFINE_integer("process_id", None, "Several hosts: this process's index, 0..N-1.")


def _train() -> None:
    cli.apply_default_cpu_flags()  # before JAX starts its CPU backend
    import jax  # TensorFlow, where a data source needs it, is imported by dataset.import_tensorflow

    cluster = dict(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )
    if FLAGS.distributed or any(value is not None for value in cluster.values()):
        # Also starts JAX's preemption service: a SIGTERM to any process stops them all.
        jax.distributed.initialize(**cluster)
        logging.info("Process %d of %d", jax.process_index(), jax.process_count())
    from comatch_jax.trainer import train

    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


# Outside the training loop (start-up, compiling, the final evaluation) a Ctrl-C ends the run
# at once; Orbax's saves are atomic, so the workdir keeps only complete checkpoints.
main = cli.entry_point(
    _train, interrupted="Interrupted (Ctrl-C); rerun the same command to resume."
)

if __name__ == "__main__":
    cli.run(main)
