"""A run's workdir: what it holds, how it is checked, written, and read back.

A workdir holds `config.json` (the config), `run_info.json` (checkpoint format, dataset facts:
classes, image shape, source), `checkpoints/` (Orbax, the whole TrainState), `metrics.jsonl`,
TensorBoard event files and `summary.json`. The trainer writes it; the commands (probe,
predict, analyze, request_labels) read it with `load_run`, never through the trainer.
Checkpoints are restored one way: onto the abstract (jax.eval_shape'd) TrainState of the
run's config, with explicit shardings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from comatch_jax.core import methods, models, train_state
from comatch_jax import config_lib, multihost
from comatch_jax.core.train_state import TrainState

RUN_INFO = "run_info.json"
# What runs before checkpoint format 2 wrote instead of run_info.json.
LEGACY_DATASET_INFO = "dataset_info.json"
# 1 (unrecorded): TrainState.rng a raw uint32[2] key. 2: typed PRNG keys (jax.random.key).
CHECKPOINT_FORMAT = 2

# Fields a resumed run may change (the same command with these overrides continues the run
# from its latest checkpoint):
# - how it is logged, evaluated, checkpointed and fed, which does not change what is trained;
# - optim.lr and nonfinite_policy, the advice after a non-finite loss: the learning-rate
#   schedule continues at the optimizer's own step count with the new peak rate, and a
#   skip policy applies from the resumed step on; each change is logged;
# - num_steps: the schedule is recomputed for the new total at the optimizer's step count,
#   so a cosine's rate at the resumed step changes (logged with both rates) and the run
#   then decays to the end of the new total.
# Every other field changes what is trained and is refused (a new --workdir is needed).
RESUMABLE_CHANGES = frozenset(
    [
        "num_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_batch_size",
        "data_on_device",
        "optim.lr",
        "nonfinite_policy",
    ]
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_workdir(
    config: ml_collections.ConfigDict, workdir: str, fingerprint: dict[str, Any] | None = None
) -> None:
    """Refuses a workdir that holds something else than this run, before touching it.

    Raises ValueError for a non-empty directory without a run, a run on different data (its
    recorded datasets.data_fingerprint differs from `fingerprint`: says what changed, and for
    an image-folder run without unlabeled draws whose unlabeled/ changed, why it matters), a run
    of a different config (fields other than RESUMABLE_CHANGES), or checkpoints of an older
    format.
    """
    if not os.path.isdir(workdir) or not os.listdir(workdir) or _only_an_empty_start(workdir):
        return
    saved_path = os.path.join(workdir, "config.json")
    if not os.path.exists(saved_path):
        raise ValueError(
            f"--workdir={workdir} is not empty and holds no comatch_jax run; "
            "choose a new or empty directory."
        )
    info_path = os.path.join(workdir, RUN_INFO)
    if fingerprint is not None and os.path.exists(info_path):
        from comatch_jax import data as datasets

        with open(info_path) as f:
            saved_fingerprint = json.load(f).get("fingerprint")
        change = saved_fingerprint and datasets.describe_data_change(saved_fingerprint, fingerprint)
        if change:
            change += _why_unlabeled_matters(config, workdir, saved_fingerprint, fingerprint)
            raise ValueError(
                f"--workdir={workdir} holds a run on other data ({change}); use a new "
                "--workdir to train on the data as it is now, or restore the data to resume."
            )
    with open(saved_path) as f:  # a field added since the run was saved: its default
        saved = _flatten(json.loads(config_lib.base_config().to_json_best_effort()))
        saved.update(_flatten(json.load(f)))
    current = _flatten(json.loads(config.to_json_best_effort()))
    differing = sorted(
        key
        for key in set(saved) | set(current)
        if saved.get(key) != current.get(key) and key not in RESUMABLE_CHANGES
    )
    if differing:
        raise ValueError(
            f"--workdir={workdir} holds a run with a different config ({', '.join(differing)}); "
            "use a new --workdir, or the same config to resume (only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)."
        )
    if _has_checkpoints(workdir):
        read_run_info(workdir)  # raises on an older checkpoint format
        step = _latest_checkpoint_step(workdir)
        if config.num_steps < step:
            raise ValueError(
                f"The checkpoint in {workdir} is at step {step} > num_steps={config.num_steps}; "
                f"use --config.num_steps={step} (the run as it is) or more (to train on), or a "
                "new --workdir."
            )
        _log_resume_changes(saved, current, workdir)


def _why_unlabeled_matters(
    config: ml_collections.ConfigDict,
    workdir: str,
    saved_fingerprint: dict[str, Any],
    fingerprint: dict[str, Any],
) -> str:
    """For an image-folder run that draws no unlabeled images (mu = 0) whose unlabeled/
    changed: why that is a change of its data (the folder's mean/std, which it normalises
    with, are measured over labeled/ and unlabeled/); else ""."""
    from comatch_jax.data import loader as training_data
    from comatch_jax.data import dataset as normalization

    before = saved_fingerprint.get("parts", {}).get("unlabeled")
    after = fingerprint.get("parts", {}).get("unlabeled")
    if (
        config.dataset.name != "image_folder"
        or before == after
        or training_data.draws_unlabeled_images(config)
    ):
        return ""
    note = "; this run draws no unlabeled images, but the folder's mean/std include unlabeled/"
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f).get("dataset", {})
    for key in ("mean", "std"):  # the values it normalised with, and would now
        old, new = saved.get(key), config.dataset.get(key)
        if old and new and [float(v) for v in old] != [float(v) for v in new]:
            note += (
                f"; {key} {normalization.format_channels(old)} -> "
                f"{normalization.format_channels(new)}"
            )
    return note


def _log_resume_changes(saved: dict[str, Any], current: dict[str, Any], workdir: str) -> None:
    """One log line per resumable field whose change alters training (num_steps, optim.lr,
    nonfinite_policy), with the learning rate before and after at the resumed step."""
    changed = [
        k for k in ("num_steps", "optim.lr", "nonfinite_policy") if saved.get(k) != current.get(k)
    ]
    if not changed:
        return
    step = _latest_checkpoint_step(workdir)
    for key in changed:
        logging.warning(
            "Resuming %s at step %d with %s=%s (was %s).",
            workdir,
            step,
            key,
            current.get(key),
            saved.get(key),
        )
    if "num_steps" in changed or "optim.lr" in changed:
        before, after = (
            float(train_state.learning_rate_schedule(_config_of(flat))(step))
            for flat in (saved, current)
        )
        logging.warning(
            "The learning-rate schedule continues for num_steps=%s from step %d: rate %.6g there "
            "(it was %.6g under the saved config).",
            current.get("num_steps"),
            step,
            after,
            before,
        )


def _config_of(flat: dict[str, Any]) -> ml_collections.ConfigDict:
    """A ConfigDict from _flatten's dotted keys."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return ml_collections.ConfigDict(tree)


def _only_an_empty_start(workdir: str) -> bool:
    """Whether `workdir` holds nothing but the empty checkpoints/ folder of a run that was
    stopped (e.g. by Ctrl-C while compiling) before it wrote its record: a fresh start."""
    if os.listdir(workdir) != ["checkpoints"]:
        return False
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and not os.listdir(directory)


def _latest_checkpoint_step(workdir: str) -> int:
    """The step of the latest complete checkpoint in workdir/checkpoints (one must exist)."""
    return max(
        int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit()
    )


def _has_checkpoints(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def read_run_info(workdir: str) -> dict[str, Any]:
    """run_info.json of `workdir`: checkpoint_format, num_classes, class_names, image_shape,
    source. Raises ValueError (one line: what to do) for a run of an older checkpoint
    format, FileNotFoundError when the workdir holds no run."""
    path = os.path.join(workdir, RUN_INFO)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(workdir, LEGACY_DATASET_INFO)):
            _raise_old_format(workdir, 1)
        raise FileNotFoundError(
            f"{workdir} holds no comatch_jax run (no config.json / {RUN_INFO})."
        )
    with open(path) as f:
        info = json.load(f)
    if info.get("checkpoint_format") != CHECKPOINT_FORMAT:
        _raise_old_format(workdir, info.get("checkpoint_format"))
    return info


def _raise_old_format(workdir: str, found: Any) -> None:
    raise ValueError(
        f"{workdir} was written by another version of comatch_jax (checkpoint format {found}; "
        f"this version reads format {CHECKPOINT_FORMAT}, with typed PRNG keys): start a fresh "
        "--workdir, or use the comatch_jax release that wrote it to finish or read that run."
    )


def save_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    """Writes `record` as workdir/name (process 0 only)."""
    if not multihost.is_primary():
        return
    with open(os.path.join(workdir, name), "w") as f:
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
    """Writes config.json and run_info.json (process 0 only), before any checkpoint.
    `fingerprint` (datasets.data_fingerprint) lets a resumed run notice changed data."""
    if not multihost.is_primary():
        return
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    save_json(
        workdir,
        RUN_INFO,
        {
            "checkpoint_format": CHECKPOINT_FORMAT,
            "num_classes": num_classes,
            "class_names": list(class_names),
            "image_shape": list(image_shape),
            "source": source,
            "fingerprint": fingerprint,
        },
    )


def checkpoint_manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """The Orbax manager of workdir/checkpoints (created if missing)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        # Named, so that reading a step's metadata (train_seconds_at) needs no restore args.
        item_handlers=ocp.StandardCheckpointHandler(),
    )


def build_training(
    config: ml_collections.ConfigDict,
    num_classes: int,
    image_shape: tuple[int, int, int],
    num_devices: int = 1,
) -> tuple[methods.Method, Any, Any, Any]:
    """(method, model, optimizer, init_state) for `config`; init_state(key) -> TrainState,
    with `key` a typed PRNG key (jax.random.key)."""
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
    manager: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    train_seconds: float | None = None,
) -> None:
    """Starts writing checkpoint `step` of the whole TrainState (asynchronously; Orbax
    commits it only once complete, so a half-written checkpoint is never restored).
    `train_seconds` (wall-clock seconds of training up to this step, over every process that
    trained the run) goes into the checkpoint's metadata, for `train_seconds_at`."""
    custom_metadata = None if train_seconds is None else {"train_seconds": float(train_seconds)}
    manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=custom_metadata)
    logging.info("Saving the checkpoint of step %d", step)


def train_seconds_at(manager: ocp.CheckpointManager, step: int) -> float:
    """The training time (wall-clock seconds, summed over the processes that trained the run
    up to `step`) recorded with checkpoint `step` by `save_checkpoint`; 0.0 for a checkpoint
    written without it (by an earlier version)."""
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


def load_run(
    workdir: str, step: int | None = None, sharding: jax.sharding.Sharding | None = None
) -> TrainedRun:
    """Restores the config, the model and the TrainState (latest checkpoint, or `step`),
    placed with `sharding` (e.g. replicated over a multi-host mesh; default: this process's
    first device). Raises FileNotFoundError (no run, no checkpoint) or ValueError (another
    format or model), each one line."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"{workdir} holds no comatch_jax run (no config.json / {RUN_INFO})."
        )
    info = read_run_info(workdir)
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
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
