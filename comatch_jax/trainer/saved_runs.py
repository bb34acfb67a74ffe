"""A run's saved record: what its workdir holds, how it is checked, written and read back.

A workdir holds `config.json` (the config), `run_info.json` (checkpoint format, dataset facts:
classes, image shape, source, data fingerprint), `checkpoints/` (Orbax, the whole
TrainState), `metrics.jsonl`, TensorBoard event files and `summary.json`. The trainer writes
it; the commands (probe, predict, analyze, request_labels) read it with `load_run`, never
through the trainer. Checkpoints are restored one way: onto the abstract (jax.eval_shape'd)
TrainState of the run's config, with explicit shardings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from comatch_jax import atomic_files, config_lib, data, multihost
from comatch_jax.core import methods, models, train_state
from comatch_jax.core.train_state import TrainState

RUN_INFO = "run_info.json"
# 2: typed PRNG keys (jax.random.key) in the TrainState.
CHECKPOINT_FORMAT = 2

# Fields the same command may change when it resumes a run: how the run is logged, evaluated,
# checkpointed and fed, its length, and the two overrides the advice after a non-finite loss
# gives (metrics.check_finite). Any other change is refused: it needs a new --workdir.
RESUMABLE_CHANGES = frozenset(
    "num_steps log_every eval_every checkpoint_every keep_checkpoints eval_batch_size "
    "data_on_device optim.lr nonfinite_policy".split()
)


def check_workdir(
    config: ml_collections.ConfigDict, workdir: str, fingerprint: dict[str, Any] | None = None
) -> None:
    """Refuses a workdir that holds something else than this run, before touching it.

    Raises ValueError for a path Orbax cannot use ('[' or ']'), a non-empty directory
    without a run, a run on other data (its recorded data fingerprint differs from
    `fingerprint`: says what changed), a run of another config (fields other than
    RESUMABLE_CHANGES), or a checkpoint past config.num_steps.
    """
    if "[" in os.path.abspath(workdir) or "]" in os.path.abspath(workdir):
        raise ValueError(
            f"--workdir={workdir} holds '[' or ']', which Orbax reads as a file pattern when it "
            "assembles a checkpoint (the run could not be resumed or read); choose a path "
            "without them."
        )
    if not os.path.isdir(workdir) or not os.listdir(workdir) or _only_an_empty_start(workdir):
        return
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise ValueError(
            f"--workdir={workdir} is not empty and holds no comatch_jax run; "
            "choose a new or empty directory."
        )
    recorded = read_run_info(workdir).get("fingerprint")
    change = recorded and fingerprint and data.describe_data_change(recorded, fingerprint)
    if change:
        raise ValueError(
            f"--workdir={workdir} holds a run on other data ({change}); use a new "
            "--workdir to train on the data as it is now, or restore the data to resume."
        )
    with open(os.path.join(workdir, "config.json")) as f:  # a field added since: its default
        saved = traverse_util.flatten_dict(json.loads(config_lib.base_config().to_json()), sep=".")
        saved.update(traverse_util.flatten_dict(json.load(f), sep="."))
    current = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    refused = [key for key in changed if key not in RESUMABLE_CHANGES]
    if refused:
        raise ValueError(
            f"--workdir={workdir} holds a run with a different config ({', '.join(refused)}); "
            "use a new --workdir, or the same config to resume (only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)."
        )
    steps = _checkpoint_steps(workdir)
    if steps and config.num_steps < max(steps):
        raise ValueError(
            f"The checkpoint in {workdir} is at step {max(steps)} > num_steps="
            f"{config.num_steps}; use --config.num_steps={max(steps)} (the run as it is) or "
            "more (to train on), or a new --workdir."
        )
    if steps and changed:
        changes = ", ".join(f"{k}={current.get(k)} (was {saved.get(k)})" for k in changed)
        logging.warning(f"Resuming the run in {workdir} with {changes}.")


def _only_an_empty_start(workdir: str) -> bool:
    """Whether `workdir` holds nothing but the lock and empty checkpoints/ folder of a run
    that was stopped (e.g. by Ctrl-C while compiling) before it wrote its record: a fresh start."""
    if not set(os.listdir(workdir)) <= {"checkpoints", LOCK_NAME}:
        return False
    directory = os.path.join(workdir, "checkpoints")
    return not os.path.isdir(directory) or not os.listdir(directory)


def _checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in workdir/checkpoints."""
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return [int(name) for name in names if name.isdigit()]


def read_run_info(workdir: str) -> dict[str, Any]:
    """run_info.json of `workdir`: checkpoint_format, num_classes, class_names, image_shape,
    source, fingerprint. Raises FileNotFoundError when the workdir holds no run, ValueError
    (one line) for a run whose checkpoints this version cannot read."""
    path = os.path.join(workdir, RUN_INFO)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir} holds no comatch_jax run (no config.json / {RUN_INFO})."
        )
    with open(path) as f:
        info = json.load(f)
    if info.get("checkpoint_format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{workdir} was written by another version of comatch_jax (checkpoint format "
            f"{info.get('checkpoint_format')}; this version reads format {CHECKPOINT_FORMAT}): "
            "start a fresh --workdir, or use the version that wrote it to read that run."
        )
    return info


def save_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    """Writes `record` as workdir/name, whole or not at all (process 0 only)."""
    if multihost.is_primary():
        with atomic_files.open_atomic(os.path.join(workdir, name)) as f:
            json.dump(record, f, indent=2)


def save_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    num_classes: int,
    class_names: tuple[str, ...],
    image_shape: tuple[int, ...],
    source: str,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Writes run_info.json, then config.json (which marks the workdir as a run's), process
    0 only, before any checkpoint. `fingerprint` (data.data_fingerprint) lets a resumed run
    notice changed data."""
    info = {
        "checkpoint_format": CHECKPOINT_FORMAT,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "image_shape": list(image_shape),
        "source": source,
        "fingerprint": fingerprint,
    }
    save_json(workdir, RUN_INFO, info)
    if multihost.is_primary():
        with atomic_files.open_atomic(os.path.join(workdir, "config.json")) as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def checkpoint_manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """The Orbax manager of workdir/checkpoints (created if missing)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        # Named, so that reading a step's metadata (train_seconds_at) needs no restore args.
        item_handlers=ocp.StandardCheckpointHandler(),
    )


LOCK_NAME = "training.lock"


@contextlib.contextmanager
def claim_workdir(workdir: str, keep_checkpoints: int) -> Iterator[ocp.CheckpointManager]:
    """Creates `workdir` and holds it while a run trains there; yields the Orbax manager of
    workdir/checkpoints, closed on every exit (which finishes a started save: no half-written
    checkpoint).

    Process 0 holds an exclusive lock on workdir/training.lock, which the OS lets go when the
    process ends, however it ends. Raises ValueError when another process holds it (a second
    training on the same workdir), and turns a full disk (an OSError, or Orbax's error whose
    message holds the OS's 'No space left on device') into one OSError saying what to do.
    """
    atomic_files.make_directory(workdir, "workdir")
    primary = multihost.is_primary()
    with (
        open(os.path.join(workdir, LOCK_NAME), "a") if primary else contextlib.nullcontext()
    ) as lock:
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"--workdir={workdir} is in use by another training process; wait for it to end "
                "(the same command then resumes), or use another --workdir."
            ) from None
        except OSError as error:  # a file system without flock (some network ones)
            logging.warning(f"Cannot lock {lock.name} ({error}): a second training is not refused.")
        checkpoints = checkpoint_manager(workdir, max_to_keep=keep_checkpoints)
        try:
            with checkpoints:
                yield checkpoints
        except Exception as error:
            cause = error
            while cause is not None and not (
                (isinstance(cause, OSError) and cause.errno == errno.ENOSPC)
                or os.strerror(errno.ENOSPC) in str(cause)
            ):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            step = checkpoints.latest_step()  # Orbax forgets a save that failed
            then = "start again" if step is None else f"resume from step {step}"
            raise OSError(
                f"the disk is full at {os.path.abspath(workdir)}; free space and rerun the same "
                f"command to {then}"
            ) from None


def build_training(
    config: ml_collections.ConfigDict,
    num_classes: int,
    image_shape: tuple[int, int, int],
    num_devices: int = 1,
) -> tuple[methods.Method, Any, Any, Any]:
    """(method, model, optimizer, init_state) for `config` on `num_devices` devices;
    init_state(key) -> TrainState, with `key` a typed PRNG key (jax.random.key). Raises
    ValueError when the batch sizes do not split over the devices."""
    if config.batch_size % num_devices or config.eval_batch_size % num_devices:
        raise ValueError(
            f"batch_size ({config.batch_size}) and eval_batch_size ({config.eval_batch_size}) "
            f"must be multiples of the {num_devices} devices the batch is sharded over"
            f" ({jax.process_count()} process(es))."
        )
    method = methods.get_method(config.method)
    model = models.create_model(config.model, num_classes, image_shape, num_devices=num_devices)
    tx = train_state.create_optimizer(config)
    init_state = lambda key: train_state.create_train_state(
        key,
        model=model,
        tx=tx,
        method=method,
        config=config,
        image_shape=image_shape,
        num_classes=num_classes,
    )
    return method, model, tx, init_state


def abstract_state(init_state: Any, sharding: jax.sharding.Sharding) -> TrainState:
    """The TrainState's shapes and dtypes (nothing computed), every leaf placed with
    `sharding`: the target a checkpoint is restored onto."""
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        jax.eval_shape(lambda: init_state(jax.random.key(0))),
    )


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: TrainState, seconds: float = 0.0
) -> None:
    """Starts writing checkpoint `step` of the whole TrainState (asynchronously; Orbax
    commits it only once complete), with the training time up to it (wall-clock `seconds`,
    summed over the processes that trained the run) for `train_seconds_at`."""
    manager.save(
        step, args=ocp.args.StandardSave(state), custom_metadata={"train_seconds": seconds}
    )
    logging.info("Saving the checkpoint of step %d", step)


def train_seconds_at(manager: ocp.CheckpointManager, step: int) -> float:
    """The training time recorded with checkpoint `step` by `save_checkpoint` (0.0 if none)."""
    metadata = manager.metadata(step)
    return float((getattr(metadata, "custom_metadata", None) or {}).get("train_seconds", 0.0))


def restore_state(
    manager: ocp.CheckpointManager, step: int, target: TrainState, workdir: str
) -> TrainState:
    """Restores checkpoint `step` onto `target` (from `abstract_state`). Raises ValueError,
    one line, when the checkpoint was written for a different model or code version."""
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    except ValueError as error:
        raise ValueError(
            f"The checkpoint of step {step} in {workdir} does not match this model's state "
            f"({str(error).splitlines()[0][:160]}...); it was written by another model or "
            "version of comatch_jax. Use a new --workdir."
        ) from None


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A finished (or checkpointed) run read back from its workdir."""

    config: ml_collections.ConfigDict
    state: TrainState
    model: Any
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved in workdir/config.json, over config_lib.base_config() so that a
    field added since the run was saved reads as its default. Raises FileNotFoundError (one
    line) when the workdir holds no run."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no comatch_jax run (no config.json).")
    config = config_lib.base_config()
    with open(path) as f, config.unlocked():
        config.update(json.load(f))
    return config


def load_run(
    workdir: str, step: int | None = None, sharding: jax.sharding.Sharding | None = None
) -> TrainedRun:
    """Restores the config, the model and the TrainState (latest checkpoint, or `step`),
    placed with `sharding` (e.g. replicated over a multi-host mesh; default: this process's
    first device). Raises FileNotFoundError (no run, no checkpoint) or ValueError (another
    format or model), each one line."""
    info = read_run_info(workdir)
    config = read_config(workdir)
    _, model, _, init_state = build_training(
        config, info["num_classes"], tuple(info["image_shape"])
    )
    # An explicit placement, so that a checkpoint written by any number of devices or
    # processes restores here (by default onto this process's first device).
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with checkpoint_manager(workdir) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet.")
        state = restore_state(manager, step, abstract_state(init_state, sharding), workdir)
    if step < config.num_steps:
        logging.warning(
            f"{workdir} is not finished: using its checkpoint of step {step} of "
            f"{config.num_steps}."
        )
    return TrainedRun(
        config,
        state,
        model,
        info["num_classes"],
        tuple(info["class_names"]),
        tuple(info["image_shape"]),
    )


def initialise_backbone_from(
    state: TrainState, workdir: str, sharding: jax.sharding.Sharding | None = None
) -> TrainState:
    """Copies the backbone's params and BatchNorm statistics (the EMA model's) of another
    run's latest checkpoint into `state`, raw and EMA (fine-tuning a pretrained encoder).
    Raises ValueError when the backbones differ."""
    pretrained = load_run(workdir, sharding=sharding).state

    def graft(tree, source):
        if jax.tree.structure(tree["backbone"]) != jax.tree.structure(source["backbone"]) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree.leaves(tree["backbone"]), jax.tree.leaves(source["backbone"]))
        ):
            raise ValueError(
                f"init_from={workdir}: its backbone does not match this model; use the same "
                "model.* settings as the pretraining run."
            )
        return {**tree, "backbone": jax.tree.map(jnp.copy, source["backbone"])}

    logging.info("Initialised the backbone from %s (step %d)", workdir, int(pretrained.step))
    return state.replace(
        params=graft(state.params, pretrained.ema_params),
        batch_stats=graft(state.batch_stats, pretrained.ema_batch_stats),
        ema_params=graft(state.ema_params, pretrained.ema_params),
        ema_batch_stats=graft(state.ema_batch_stats, pretrained.ema_batch_stats),
    )
