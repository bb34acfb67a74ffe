"""The trainer: one loop for every method, with evaluation, logging and checkpoints.

`train_and_evaluate(config, workdir)` builds everything from the config, resumes from the
latest checkpoint in `workdir` if there is one, trains, and returns the final state and a
summary. TensorFlow (file reading) and clu's writers are imported only here, lazily.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from absl import logging

from comatch_jax import (
    config_lib,
    inference,
    methods,
    models,
    probes,
    sampling,
    train_state,
    train_step,
)
from comatch_jax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
    """The arrays one run trains and evaluates on (uint8 images, int32 labels)."""

    labeled_images: np.ndarray
    labels: np.ndarray
    unlabeled_images: np.ndarray
    unlabeled_labels: np.ndarray  # ground truth, only to monitor pseudo-label accuracy
    labeled_ids: np.ndarray  # int32 train-split index of each labeled image
    unlabeled_ids: np.ndarray  # int32 train-split index, -1 for extra_unlabeled_split images
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str
    # Image-folder runs: the file of each unlabeled row (relative to dataset.root); then
    # unlabeled_ids are rows of it and labeled_ids are -1 for images from labeled/.
    unlabeled_paths: tuple[str, ...] = ()


def prepare_data(config: ml_collections.ConfigDict, dataset: Any = None) -> SemiSupervisedData:
    """Loads the dataset (unless given) and splits it into labeled and unlabeled parts.

    The rows of `config.dataset.extra_labels_csv` (id,label), if set, join the labeled set
    with their given labels and leave the unlabeled set (image folders: path,label rows, see
    _folder_data).
    """
    from comatch_jax import datasets  # imports TensorFlow lazily, only to read files
    from comatch_jax import label_requests

    if dataset is None and config.dataset.name == "image_folder":
        dataset = load_image_folder_dataset(config)
    if dataset is not None and dataset.name == "image_folder":
        return _folder_data(dataset, config)
    if dataset is None:
        dataset = datasets.load_dataset(config.dataset)
    labeled, unlabeled = datasets.split_labeled_unlabeled(
        dataset.train_labels,
        num_labels=config.num_labels,
        num_classes=dataset.num_classes,
        seed=config.seed,
        include_labeled_in_unlabeled=config.dataset.include_labeled_in_unlabeled,
    )
    labels = dataset.train_labels[labeled]
    extra_labels_csv = config.dataset.get("extra_labels_csv")
    if extra_labels_csv:
        extra_ids, extra_labels = label_requests.read_labels_csv(
            extra_labels_csv,
            num_images=len(dataset.train_labels),
            num_classes=dataset.num_classes,
            already_labeled=labeled,
        )
        order = np.argsort(np.concatenate([labeled, extra_ids]), kind="stable")
        labeled = np.concatenate([labeled, extra_ids])[order]
        labels = np.concatenate([labels, extra_labels])[order]
        if not config.dataset.include_labeled_in_unlabeled:
            unlabeled = np.setdiff1d(unlabeled, extra_ids).astype(np.int32)
    unlabeled_images = dataset.train_images[unlabeled]
    unlabeled_labels = dataset.train_labels[unlabeled]
    unlabeled_ids = unlabeled
    extra = dataset.unlabeled_images
    if extra is not None and len(extra):
        unlabeled_images = np.concatenate([unlabeled_images, extra])
        # Extra unlabeled images have no ground truth: -1 never matches a pseudo-label.
        unlabeled_labels = np.concatenate([unlabeled_labels, np.full(len(extra), -1, np.int32)])
        unlabeled_ids = np.concatenate([unlabeled_ids, np.full(len(extra), -1, np.int32)])
    logging.info(
        "Data from %s: %d labeled, %d unlabeled, %d test images of shape %s, %d classes",
        dataset.source,
        len(labeled),
        len(unlabeled_images),
        len(dataset.test_labels),
        dataset.train_images.shape[1:],
        dataset.num_classes,
    )
    return SemiSupervisedData(
        labeled_images=dataset.train_images[labeled],
        labels=labels.astype(np.int32),
        unlabeled_images=unlabeled_images,
        unlabeled_labels=unlabeled_labels.astype(np.int32),
        labeled_ids=labeled.astype(np.int32),
        unlabeled_ids=unlabeled_ids.astype(np.int32),
        test_images=dataset.test_images,
        test_labels=dataset.test_labels.astype(np.int32),
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        source=dataset.source,
    )


def _prepare_data_in_turn(config: ml_collections.ConfigDict, dataset: Any) -> SemiSupervisedData:
    """prepare_data; in a multi-host run process 0 first, so that it alone builds an image
    folder's decode cache (on a shared disk the others then read it)."""
    if jax.process_count() == 1 or dataset is not None or config.dataset.name != "image_folder":
        return prepare_data(config, dataset)
    data = prepare_data(config, dataset) if _is_primary() else None
    _barrier("image cache built")
    return data if data is not None else prepare_data(config, dataset)


def load_image_folder_dataset(config: ml_collections.ConfigDict):
    """The image-folder source: labeled/<class>/, unlabeled/**, optional val/<class>/."""
    from comatch_jax import datasets

    options = config.dataset
    if not options.root:
        raise ValueError("dataset.name=image_folder needs --config.dataset.root=DIR")
    return datasets.load_image_folder(
        options.root,
        image_size=options.image_size,
        cache_dir=options.cache_dir,
        val_fraction=options.val_fraction,
        seed=config.seed,
        corrupt_policy=options.corrupt_policy,
    )


def _folder_data(dataset, config: ml_collections.ConfigDict) -> SemiSupervisedData:
    """All of labeled/ is labeled (num_labels does not apply); val/ (or the held-out part)
    is the evaluation set. The unlabeled images stay a memory-mapped uint8 cache.

    `config.dataset.extra_labels_csv` (path,label: the answers to a requests CSV) adds
    unlabeled images to the labeled set; they also stay in the unlabeled pool (the cache is
    not rewritten), as with dataset.include_labeled_in_unlabeled.
    """
    from comatch_jax import label_requests

    unlabeled_count = len(dataset.unlabeled_paths)
    labeled_images = np.asarray(dataset.train_images)
    labels = dataset.train_labels.astype(np.int32)
    labeled_ids = np.full(len(labels), -1, np.int32)  # labeled/ images have no unlabeled row
    extra_labels_csv = config.dataset.get("extra_labels_csv")
    if extra_labels_csv:
        rows, extra_labels = label_requests.read_folder_labels_csv(
            extra_labels_csv,
            root=config.dataset.root,
            unlabeled_paths=dataset.unlabeled_paths,
            class_names=dataset.class_names,
        )
        labeled_images = np.concatenate([labeled_images, dataset.unlabeled_images[np.sort(rows)]])
        labels = np.concatenate([labels, extra_labels[np.argsort(rows)]])
        labeled_ids = np.concatenate([labeled_ids, np.sort(rows)])
        logging.info("Added %d labeled images from %s.", len(rows), extra_labels_csv)
    logging.info(
        "Data from %s: %d labeled, %d unlabeled, %d validation images, %d classes",
        dataset.source,
        len(labels),
        unlabeled_count,
        len(dataset.test_labels),
        dataset.num_classes,
    )
    return SemiSupervisedData(
        labeled_images=labeled_images,
        labels=labels,
        unlabeled_images=dataset.unlabeled_images,
        unlabeled_labels=np.full(unlabeled_count, -1, np.int32),  # no ground truth
        labeled_ids=labeled_ids,
        unlabeled_ids=np.arange(unlabeled_count, dtype=np.int32),  # rows of unlabeled_paths
        test_images=np.asarray(dataset.test_images),
        test_labels=dataset.test_labels.astype(np.int32),
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        source=dataset.source,
        unlabeled_paths=tuple(dataset.unlabeled_paths),
    )


def evaluate(
    eval_step,
    params,
    batch_stats,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, float]:
    """Accuracy and mean NLL over the whole set; the last batch is padded and masked.

    With `sharding` (the batch sharding of the mesh) every chunk is split over the devices, so
    in a multi-host run each process evaluates its share of every chunk."""
    totals = {"correct": 0.0, "nll": 0.0, "count": 0.0}
    for start in range(0, len(labels), batch_size):
        chunk_images = images[start : start + batch_size]
        chunk_labels = labels[start : start + batch_size]
        pad = batch_size - len(chunk_labels)
        mask = np.concatenate([np.ones(len(chunk_labels), np.float32), np.zeros(pad, np.float32)])
        if pad:
            chunk_images = np.concatenate(
                [chunk_images, np.zeros((pad, *chunk_images.shape[1:]), chunk_images.dtype)]
            )
            chunk_labels = np.concatenate([chunk_labels, np.zeros(pad, chunk_labels.dtype)])
        chunk = (chunk_images, chunk_labels, mask)
        if sharding is not None:  # the same host values on every process: each keeps its rows
            chunk = jax.device_put(chunk, sharding)
        sums = eval_step(params, batch_stats, *chunk)
        for key, value in jax.device_get(sums).items():
            totals[key] += float(value)
    return {"accuracy": totals["correct"] / totals["count"], "nll": totals["nll"] / totals["count"]}


def knn_evaluate(predict_batch, variables, data: SemiSupervisedData, config) -> dict[str, float]:
    """Weighted-kNN test accuracy with the labeled images' features as the memory bank."""
    predict = lambda images: inference.predict_with(
        None,
        variables,
        images,
        mean=None,
        std=None,
        batch_size=config.eval_batch_size,
        progress=False,
        predict_batch=predict_batch,
    )["features"]
    predictions = probes.knn_predict(
        predict(data.labeled_images),
        data.labels,
        predict(data.test_images),
        num_classes=data.num_classes,
        k=config.probe.knn_k,
        temperature=config.probe.knn_temperature,
    )
    return {"accuracy": float(np.mean(np.asarray(predictions) == data.test_labels))}


def initialise_backbone_from(
    state: TrainState, workdir: str, sharding: jax.sharding.Sharding | None = None
) -> TrainState:
    """Copies the backbone's params and BatchNorm statistics (raw and EMA) of another run's
    latest checkpoint into `state` (fine-tuning a pretrained encoder)."""
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


class _TerminationRequest:
    """Turns SIGTERM and Ctrl-C into a flag the loop checks, so it checkpoints before exiting."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        logging.warning("%s received: checkpointing and stopping.", self.signal_name)
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _mean_metrics(fetched: list[dict[str, Any]], policy: str) -> dict[str, float]:
    """Means over the steps since the last log; with policy 'skip', skipped steps' losses
    are left out and their number is reported as skipped_steps."""
    keep = fetched
    if policy == "skip":
        keep = [m for m in fetched if not m["skipped"]] or fetched
    means = {k: float(np.mean([m[k] for m in keep])) for k in fetched[0] if k != "skipped"}
    if policy == "skip":
        means["skipped_steps"] = float(sum(m["skipped"] for m in fetched))
    return means


def _check_finite(step: int, metrics: dict[str, float], policy: str) -> None:
    """Raises, naming the step and the term, on non-finite metrics ('skip': on params only)."""
    names = ["param_norm"] if policy == "skip" else list(metrics)
    bad = [name for name in names if not np.isfinite(metrics[name])]
    if bad:
        raise FloatingPointError(
            f"Non-finite {', '.join(bad)} in the steps up to {step}; training stopped and the "
            "last good checkpoint is kept. Lower optim.lr, check the inputs, or set "
            "--config.nonfinite_policy=skip to skip such steps."
        )


def _format_progress(step: int, total: int, metrics: dict[str, float], eta: float) -> str:
    shown = " ".join(
        f"{name}={metrics[name]:.4f}"
        for name in ("loss", "loss_x", "loss_u", "loss_ctr", "mask_rate", "pseudo_label_acc")
        if name in metrics
    )
    return f"step {step}/{total} {shown} | {metrics['images_per_sec']:.0f} img/s | ETA {_hms(eta)}"


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def data_parallel_mesh() -> Mesh:
    """A 1-D mesh named 'data' over every device of every process (one device: nothing
    changes; several processes after jax.distributed.initialize: the global batch is split
    over all their devices)."""
    return Mesh(np.array(jax.devices()), ("data",))


def _is_primary() -> bool:
    """Process 0 writes the run's files (config, metrics, summary); orbax coordinates the
    checkpoints itself."""
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    """All processes wait here (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"comatch_jax: {name}")


def _on_any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process: a collective every process must call."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def host_batch(
    arrays: dict[str, Any],
    step: int,
    *,
    batch_size: int,
    unlabeled_batch_size: int,
    sharding: jax.sharding.Sharding,
) -> dict[str, jax.Array]:
    """Batch `step` from host arrays (e.g. a memory-mapped image cache) as global arrays
    split by `sharding`: every process draws the same global rows (a pure function of the
    seed and the step) and reads only those of its own devices."""
    indices = jax.device_get(
        sampling.batch_indices(
            arrays, step, batch_size=batch_size, unlabeled_batch_size=unlabeled_batch_size
        )
    )
    batch = {}
    for name, (rows, array) in sampling.BATCH_SOURCES.items():
        if rows not in indices:
            continue
        source, selected = arrays[array], np.asarray(indices[rows])
        batch[name] = jax.make_array_from_callback(
            (len(selected), *source.shape[1:]),
            sharding,
            lambda index, source=source, selected=selected: np.asarray(source[selected[index[0]]]),
        )
    return batch


def _create_writer(workdir: str):
    from clu import metric_writers  # imports TensorFlow: kept out of the core

    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


# Fields a resumed run may change without changing what is trained.
RESUMABLE_CHANGES = frozenset(
    [
        "num_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_batch_size",
        "data_on_device",
    ]
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a workdir that holds something else than this run, before touching it."""
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return
    saved_path = os.path.join(workdir, "config.json")
    if not os.path.exists(saved_path):
        raise ValueError(
            f"--workdir={workdir} is not empty and holds no comatch_jax run; "
            "choose a new or empty directory."
        )
    with open(saved_path) as f:
        saved = _flatten(json.load(f))
    current = _flatten(json.loads(config.to_json_best_effort()))
    differing = sorted(
        key
        for key in set(saved) | set(current)
        if saved.get(key) != current.get(key) and key not in RESUMABLE_CHANGES
    )
    if differing:
        raise ValueError(
            f"--workdir={workdir} holds a run with a different config ({', '.join(differing)}); "
            "use a new --workdir, or the same config to resume."
        )


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if not _is_primary():
        return
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def build_training(
    config: ml_collections.ConfigDict,
    num_classes: int,
    image_shape: tuple[int, int, int],
    num_devices: int = 1,
) -> tuple[methods.Method, Any, Any, Any]:
    """(method, model, optimizer, init_state) for `config`; init_state(rng) -> TrainState."""
    method = methods.get_method(config.method)
    model = models.create_model(config.model, num_classes, image_shape, num_devices=num_devices)
    tx = train_state.create_optimizer(config)
    init_state = lambda rng: train_state.create_train_state(
        rng,
        model=model,
        tx=tx,
        method=method,
        config=config,
        image_shape=image_shape,
        num_classes=num_classes,
    )
    return method, model, tx, init_state


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    writer: Any = None,
    dataset: Any = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains `config.method` and evaluates the EMA model; resumes from `workdir`.

    Returns the final state and a summary (final test accuracy of the EMA and raw models,
    steps, wall time, data source). `writer` defaults to clu's TensorBoard + log writer;
    `dataset` (a datasets.ImageDataset) defaults to loading config.dataset.
    """
    config_lib.validate_config(config)
    check_workdir(config, workdir)
    _barrier("workdir checked")  # before process 0 writes into it
    os.makedirs(workdir, exist_ok=True)
    data = _prepare_data_in_turn(config, dataset)
    image_shape = data.labeled_images.shape[1:]
    mesh = data_parallel_mesh()
    method, model, tx, init_state = build_training(
        config, data.num_classes, image_shape, num_devices=mesh.size
    )

    rng = jax.random.PRNGKey(config.seed)
    init_rng, sampling_rng = jax.random.split(rng)
    create = lambda: init_state(init_rng)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    if config.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise ValueError(
            f"batch_size ({config.batch_size}) and eval_batch_size ({config.eval_batch_size}) "
            f"must be multiples of the {mesh.size} devices the batch is sharded over"
            f" ({jax.process_count()} process(es))."
        )
    # Params, EMA, queue and optimizer state are replicated; every batch is sharded.
    state = jax.jit(create, out_shardings=replicated)()

    checkpoints = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )
    if checkpoints.latest_step() is not None:
        latest = checkpoints.latest_step()
        state = _restore(checkpoints, latest, state, workdir)  # keeps the shardings
        logging.info("Resumed from the checkpoint of step %d in %s", latest, workdir)
    elif config.init_from:
        state = initialise_backbone_from(state, config.init_from, sharding=replicated)
    _save_config(config, workdir)
    _save_json(
        workdir,
        DATASET_INFO,
        {
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
            "image_shape": list(image_shape),
            "source": data.source,
        },
    )
    writer = writer if writer is not None else _create_writer(workdir)

    step_fn = train_step.make_train_step(model=model, tx=tx, method=method, config=config)
    unlabeled_batch_size = config.batch_size * config.mu
    arrays = {
        "labeled_images": data.labeled_images,
        "labels": data.labels,
        "unlabeled_images": data.unlabeled_images,
        "unlabeled_labels": data.unlabeled_labels,
        "sampling_rng": np.asarray(sampling_rng),
    }
    data_on_device = config.data_on_device
    if data_on_device and isinstance(data.unlabeled_images, np.memmap):
        logging.info(
            "Unlabeled images are a memory-mapped cache: batches are gathered on the host."
        )
        data_on_device = False
    if data_on_device:
        arrays = jax.device_put(arrays, replicated)
        jitted_step = jax.jit(
            train_step.make_sampling_train_step(step_fn, config, batch_sharding=batch_sharding),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        next_input = lambda step: arrays
    else:
        jitted_step = jax.jit(step_fn, out_shardings=(replicated, replicated), donate_argnums=0)
        next_input = lambda step: host_batch(
            arrays,
            step,
            batch_size=config.batch_size,
            unlabeled_batch_size=unlabeled_batch_size,
            sharding=batch_sharding,
        )
    eval_step = jax.jit(
        train_step.make_eval_step(model, config),
        in_shardings=(replicated, replicated, batch_sharding, batch_sharding, batch_sharding),
    )
    images_per_step = config.batch_size * len(method.labeled_views) + unlabeled_batch_size * len(
        method.unlabeled_views
    )

    predict_batch = jax.jit(
        inference.make_predict_fn(model, config.dataset.mean, config.dataset.std)
    )

    def accuracy_of(params, batch_stats) -> dict[str, float]:
        if method.evaluation == "self_supervised":  # the classifier is untrained: kNN
            return knn_evaluate(
                predict_batch, {"params": params, "batch_stats": batch_stats}, data, config
            )
        return evaluate(
            eval_step,
            params,
            batch_stats,
            data.test_images,
            data.test_labels,
            config.eval_batch_size,
            sharding=batch_sharding,
        )

    def run_eval(step: int) -> dict[str, float]:
        ema = accuracy_of(state.ema_params, state.ema_batch_stats)
        raw = accuracy_of(state.params, state.batch_stats)
        results = {"test_accuracy": ema["accuracy"], "test_accuracy_raw": raw["accuracy"]}
        if "nll" in ema:
            results["test_nll"] = ema["nll"]
        writer.write_scalars(step, results)
        _append_jsonl(workdir, {"step": step, **results})
        logging.info(
            "step %d: test accuracy %.4f (EMA), %.4f (raw model)%s",
            step,
            ema["accuracy"],
            raw["accuracy"],
            " by kNN on frozen features" if method.evaluation == "self_supervised" else "",
        )
        return results

    start_step = int(jax.device_get(state.step))
    pending: list[dict[str, jax.Array]] = []
    last_time, last_step, train_start = time.time(), start_step, time.time()
    results: dict[str, float] = {}
    step = start_step
    with _TerminationRequest() as termination:

        def stop_requested() -> bool:
            """One process: a signal seen at any time. Several: agreed at logging steps (a
            collective every process calls at the same steps)."""
            if jax.process_count() == 1:
                return termination.requested
            return step % config.log_every == 0 and _on_any_process(termination.requested)

        while step < config.num_steps:
            state, metrics = jitted_step(state, next_input(step))
            pending.append(metrics)
            step += 1
            final = step == config.num_steps
            stop = stop_requested()
            save = step % config.checkpoint_every == 0 or final or stop
            if pending and (step % config.log_every == 0 or save):
                # Metrics are checked before any checkpoint, so a non-finite state is never saved.
                means = _mean_metrics(jax.device_get(pending), config.nonfinite_policy)
                pending = []
                _check_finite(step, means, config.nonfinite_policy)
                now = time.time()
                seconds_per_step = (now - last_time) / max(step - last_step, 1)
                means["images_per_sec"] = images_per_step / seconds_per_step
                last_time, last_step = now, step
                writer.write_scalars(step, means)
                _append_jsonl(workdir, {"step": step, **means})
                logging.info(
                    "%s",
                    _format_progress(
                        step, config.num_steps, means, (config.num_steps - step) * seconds_per_step
                    ),
                )
            if step % config.eval_every == 0 or final:
                eval_start = time.time()
                results = run_eval(step)
                last_time += time.time() - eval_start  # throughput and ETA count training only
            stop = stop or stop_requested()  # a signal may arrive during logging
            if save or stop:
                checkpoints.save(step, args=ocp.args.StandardSave(state))
            if stop:
                checkpoints.wait_until_finished()
                raise SystemExit(
                    f"Stopped by {termination.signal_name or 'a signal to another process'} "
                    f"at step {step} after a checkpoint; "
                    "rerun the same command to resume."
                )
    checkpoints.wait_until_finished()
    if not results:
        results = run_eval(step)
    writer.flush()
    summary = {
        "final_step": step,
        "evaluation": "knn" if method.evaluation == "self_supervised" else "classifier",
        "test_accuracy": results["test_accuracy"],
        "test_accuracy_raw": results["test_accuracy_raw"],
        "train_seconds": time.time() - train_start,
        "data_source": data.source,
    }
    _save_json(workdir, "summary.json", summary)
    logging.info("Final test accuracy (EMA model): %.4f", summary["test_accuracy"])
    return state, summary


def _save_json(workdir: str, name: str, record: dict[str, Any]) -> None:
    if not _is_primary():
        return
    with open(os.path.join(workdir, name), "w") as f:
        json.dump(record, f, indent=2)


DATASET_INFO = "dataset_info.json"


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
    first device)."""
    config_path, info_path = os.path.join(workdir, "config.json"), os.path.join(
        workdir, DATASET_INFO
    )
    if not (os.path.exists(config_path) and os.path.exists(info_path)):
        raise FileNotFoundError(
            f"{workdir} holds no comatch_jax run (no config.json / {DATASET_INFO})."
        )
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(info_path) as f:
        info = json.load(f)
    method, model, _, init_state = build_training(
        config, info["num_classes"], tuple(info["image_shape"])
    )
    # An explicit placement, so that a checkpoint written by any number of devices or
    # processes restores here (by default onto this process's first device).
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        jax.eval_shape(lambda: init_state(jax.random.PRNGKey(0))),
    )
    with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints"))) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet.")
        state = _restore(manager, step, abstract, workdir)
    return TrainedRun(
        config,
        state,
        model,
        info["num_classes"],
        tuple(info["class_names"]),
        tuple(info["image_shape"]),
    )


def _restore(manager: ocp.CheckpointManager, step: int, target: Any, workdir: str) -> TrainState:
    """Restores checkpoint `step` into the structure of `target`, with a clear error when the
    checkpoint was written for a different model or code version."""
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    except ValueError as error:
        raise ValueError(
            f"The checkpoint of step {step} in {workdir} does not match this model's state "
            f"({str(error).splitlines()[0][:160]}...); it was written by another model or "
            "version of comatch_jax. Use a new --workdir."
        ) from None


def _append_jsonl(workdir: str, record: dict[str, Any]) -> None:
    if _is_primary():
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
