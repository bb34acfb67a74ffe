"""The trainer: one loop for every method, with evaluation, logging and checkpoints.

`train_and_evaluate(config, workdir)` builds everything from the config, resumes from the
latest checkpoint in `workdir` if there is one, trains, and returns the final state and a
summary. What it calls lives elsewhere: the data (data.pipeline), the workdir and its
checkpoints (saved_runs), evaluation (core.evaluation), metrics (metrics), stopping on a
signal (stopping), several processes (multihost), the pure step (core.train_step).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from comatch_jax import config_lib, multihost
from comatch_jax.core import evaluation, methods, train_step
from comatch_jax.core.train_state import TrainState
from comatch_jax.data import pipeline
from comatch_jax.trainer import metrics, pretrained, saved_runs, stopping


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, sampling key), typed PRNG keys: the first initialises the TrainState
    (whose own key drives the augmentations), the second draws the batches."""
    init_key, sampling_key = jax.random.split(jax.random.key(seed))
    return init_key, sampling_key


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, writer: Any = None, dataset: Any = None
) -> tuple[TrainState, dict[str, Any]]:
    """Trains `config.method` and evaluates the EMA model; resumes from `workdir`.

    Returns the final state and a summary (final test accuracy of the EMA and raw models,
    steps, training time summed over resumes, data source); a finished run is left as it is.
    Scalars go to `writer` (default: TensorBoard) and workdir/metrics.jsonl. `dataset` (a
    data.ImageDataset) defaults to loading config.dataset. Raises ValueError for a bad config,
    data or workdir, FloatingPointError for a non-finite loss, OSError for a full disk, and
    stopping.Stopped (a SystemExit) after the checkpoint a SIGTERM or Ctrl-C asked for.
    """
    config_lib.validate_config(config)
    # The data first: problems with it (and a mean/std that does not fit it) are reported
    # before the run claims its workdir.
    data = pipeline.prepare_data_in_turn(config, dataset)
    data = pretrained.with_pretrained_normalization(config, data)  # ImageNet's for torch weights
    config = pipeline.with_normalization(config, data)
    saved_runs.check_workdir(config, workdir, fingerprint=data.fingerprint)
    mesh = multihost.data_parallel_mesh()
    image_shape = data.labeled_images.shape[1:]
    method, model, tx, init_state = saved_runs.build_training(
        config, data.num_classes, image_shape, num_devices=mesh.size
    )
    replicated = NamedSharding(mesh, PartitionSpec())  # params, EMA, queue, optimizer state
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))  # every batch
    multihost.barrier("workdir checked")  # before process 0 writes into it
    with saved_runs.claim_workdir(workdir, config.keep_checkpoints) as checkpoints:
        state, seconds_before = _restore_or_init(
            config, workdir, checkpoints, init_state, replicated
        )
        start_step = step = int(jax.device_get(state.step))
        if step >= config.num_steps and (finished := _finished_run(workdir, step)):
            return state, finished
        if start_step:
            logging.info("Resumed from the checkpoint of step %d in %s", start_step, workdir)
        saved_runs.save_run(
            config,
            workdir,
            num_classes=data.num_classes,
            class_names=data.class_names,
            image_shape=image_shape,
            source=data.source,
            fingerprint=data.fingerprint,
        )
        logging.info("The run's config is in %s", os.path.join(workdir, "config.json"))
        writer = metrics.create_writer(workdir, primary=multihost.is_primary(), writer=writer)
        step_fn = train_step.make_train_step(model=model, tx=tx, method=method, config=config)
        jitted_step, next_input, on_host = pipeline.step_with_input(
            config, data, step_fn, run_keys(config.seed)[1], replicated, batch_sharding
        )
        knn = method.evaluation == "self_supervised"
        evaluate = _evaluator(config, model, knn, data, replicated, batch_sharding, writer)
        log_step = functools.partial(
            _log_step,
            config=config,
            writer=writer,
            method=method,
            # An image folder's unlabeled images have no truth: no pseudo-label accuracy.
            truth_known=bool(np.any(np.asarray(data.unlabeled_labels) >= 0)),
            # The last complete checkpoint: waits for an asynchronous save.
            last_checkpoint=lambda: checkpoints.wait_until_finished() or checkpoints.latest_step(),
        )
        pending: list[dict[str, jax.Array]] = []  # the step metrics since the last log
        results, skipped, saved, clock = {}, 0, checkpoints.latest_step(), (step, 0.0)
        released = saved  # the last checkpoint whose steps' scalars were written
        train_start = time.time()
        train_seconds = lambda: seconds_before + time.time() - train_start
        with contextlib.ExitStack() as stack:
            stop = stack.enter_context(stopping.StopRequest(checkpoints, jax.process_count() > 1))
            if on_host:  # the next batches are gathered and transferred while a step runs
                next_input = stack.enter_context(
                    pipeline.Prefetcher(
                        next_input, start_step=start_step, stop_step=config.num_steps, depth=2
                    )
                ).get
            while step < config.num_steps:
                state, step_metrics = jitted_step(state, next_input(step))
                pending.append(step_metrics)
                step += 1
                if step == start_step + 1:  # speed and ETA leave out the first (compiling) step
                    jax.block_until_ready(step_metrics)
                    clock = (step, time.monotonic())
                final = step == config.num_steps
                stop_now = not final and stop.requested(step)  # at the final step: finish
                save = stop_now or final or step % config.checkpoint_every == 0
                if step % config.log_every == 0 or save:
                    skipped += log_step(step, jax.device_get(pending), clock)
                    pending, clock = [], (step, time.monotonic())
                if step % config.eval_every == 0 or final:
                    results, clock = evaluate(state, step), (step, time.monotonic())
                if save:
                    saved_runs.save_checkpoint(checkpoints, step, state, train_seconds())
                    writer.release(saved)  # Orbax waited for the previous save to be committed
                    saved = step
                elif saved != released and not checkpoints.is_saving_in_progress():
                    checkpoints.wait_until_finished()  # at once; raises if that save failed
                    writer.release(released := saved)
                if stop_now:
                    checkpoints.wait_until_finished()
                    writer.release(step)
                    raise stop.stopped(step)
            checkpoints.wait_until_finished()  # under the handlers: a signal loses no scalars
            writer.release(step)
            stop.finished(step)
        results = results or evaluate(state, step)
        writer.release(step)  # a rerun's final evaluation
        _warn_if_skipped(skipped, step - start_step, step)
        summary = {
            "final_step": step,
            "evaluation": "knn" if knn else "classifier",
            "test_accuracy": results["test_accuracy"],
            "test_accuracy_raw": results["test_accuracy_raw"],
            "train_seconds": train_seconds(),
            "skipped_steps": skipped,
            "data_source": data.source,
        }
        saved_runs.save_json(workdir, "summary.json", summary)
    logging.info("Final test accuracy (EMA model): %.4f", summary["test_accuracy"])
    return state, summary


def _restore_or_init(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoints: Any,
    init_state: Callable[[jax.Array], TrainState],
    replicated: NamedSharding,
) -> tuple[TrainState, float]:
    """(state, training seconds before this process): the latest checkpoint's, or a new
    TrainState (with the pretrained weights the config names)."""
    latest = checkpoints.latest_step()
    if latest is not None:
        target = saved_runs.abstract_state(init_state, replicated)
        state = saved_runs.restore_state(checkpoints, latest, target, workdir)
        return state, saved_runs.train_seconds_at(checkpoints, latest)
    init_key, _ = run_keys(config.seed)
    state = jax.jit(lambda: init_state(init_key), out_shardings=replicated)()
    if config.init_from:
        state = saved_runs.initialise_backbone_from(state, config.init_from, sharding=replicated)
    if config.model.init_from_torch:
        state = pretrained.initialise_from_torch(state, config, sharding=replicated)
    return state, 0.0


def _finished_run(workdir: str, step: int) -> dict[str, Any] | None:
    """The summary of a run finished at `step` (workdir/summary.json), with a warning that
    there is nothing to do; None when the run has not finished (no such summary)."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    if summary["final_step"] != step:
        return None
    knn = " by kNN on frozen features" if summary["evaluation"] == "knn" else ""
    logging.warning(
        f"The run in {workdir} is already finished at step {step} (final test accuracy "
        f"{summary['test_accuracy']:.4f} EMA, {summary['test_accuracy_raw']:.4f} raw model{knn}); "
        "nothing to do."
    )
    return summary


def _log_step(
    step: int,
    step_metrics: list[dict[str, Any]],
    clock: tuple[int, float],
    *,
    config: ml_collections.ConfigDict,
    writer: metrics.HeldUntilCheckpoint,
    method: methods.Method,
    truth_known: bool,
    last_checkpoint: Callable[[], int | None],
) -> int:
    """Averages the metrics of the steps since the last log, checks them (before any
    checkpoint: a non-finite state is never saved), writes them and logs the progress line,
    with the speed since `clock` (step, time.monotonic()). Returns the number of skipped
    steps (nonfinite_policy='skip')."""
    images_per_step = config.batch_size * len(method.labeled_views)
    images_per_step += config.batch_size * config.mu * len(method.unlabeled_views)
    means = metrics.average_over_steps(step_metrics)
    metrics.check_finite(step, means, config.nonfinite_policy, last_checkpoint)
    if not truth_known:
        means.pop("pseudo_label_acc", None)
    skipped = int(means.get("skipped_steps", 0))
    if skipped == len(step_metrics):
        logging.warning(
            f"Every step since the last log (up to {step}) had a non-finite loss or gradient and "
            "was skipped (nonfinite_policy=skip): the parameters did not change."
        )
    steps_per_sec = float("nan")
    if step > clock[0]:  # not known at the first step
        steps_per_sec = (step - clock[0]) / (time.monotonic() - clock[1])
        means["steps_per_sec"] = steps_per_sec
        means["images_per_sec"] = steps_per_sec * images_per_step
    writer.write_scalars(step, {f"train/{name}": value for name, value in means.items()})
    eta = (config.num_steps - step) / steps_per_sec
    speed = steps_per_sec * images_per_step
    logging.info("%s", metrics.progress_line(step, config.num_steps, means, speed, eta))
    return skipped


def _warn_if_skipped(skipped: int, steps_run: int, step: int) -> None:
    """After the loop: how many of this run's steps were skipped (nonfinite_policy='skip')."""
    if skipped:
        advice = "."
        if skipped >= steps_run:
            advice = ": the model did not train. Check the inputs, or train in a new --workdir "
            advice += "with a lower --config.optim.lr."
        logging.warning(
            f"{skipped} of the {steps_run} steps this run made (up to {step}) were skipped for a "
            f"non-finite loss or gradient (nonfinite_policy=skip){advice}"
        )


def _evaluator(
    config: ml_collections.ConfigDict,
    model: Any,
    knn: bool,
    data: pipeline.SemiSupervisedData,
    replicated: NamedSharding,
    batch_sharding: NamedSharding,
    writer: metrics.HeldUntilCheckpoint,
) -> Callable[[TrainState, int], dict[str, float]]:
    """evaluate(state, step): the test accuracy of the EMA and the raw model (and the EMA
    model's NLL for a classifier), logged and written. A classifier is evaluated as itself,
    a self-supervised method (`knn`: its classifier is untrained) by kNN on frozen
    features."""
    if knn:
        predict_batch = jax.jit(
            evaluation.make_predict_fn(model, config.dataset.mean, config.dataset.std)
        )
        accuracy_of = lambda params, batch_stats: evaluation.knn_evaluate(
            predict_batch,
            {"params": params, "batch_stats": batch_stats},
            data.labeled_images,
            data.labels,
            data.test_images,
            data.test_labels,
            num_classes=data.num_classes,
            k=config.probe.knn_k,
            temperature=config.probe.knn_temperature,
            batch_size=config.eval_batch_size,
        )
    else:
        eval_step = jax.jit(
            train_step.make_eval_step(model, config),
            in_shardings=(replicated, replicated, batch_sharding, batch_sharding, batch_sharding),
        )
        accuracy_of = lambda params, batch_stats: evaluation.evaluate(
            eval_step,
            params,
            batch_stats,
            data.test_images,
            data.test_labels,
            config.eval_batch_size,
            sharding=batch_sharding,
        )

    def evaluate(state: TrainState, step: int) -> dict[str, float]:
        ema = accuracy_of(state.ema_params, state.ema_batch_stats)
        raw = accuracy_of(state.params, state.batch_stats)
        results = {"test_accuracy": ema["accuracy"], "test_accuracy_raw": raw["accuracy"]}
        if "nll" in ema:
            results["test_nll"] = ema["nll"]
        writer.write_scalars(step, {f"eval/{name}": value for name, value in results.items()})
        logging.info(
            f"step {step}: test accuracy {ema['accuracy']:.4f} (EMA), {raw['accuracy']:.4f} (raw "
            f"model){' by kNN on frozen features' if knn else ''}"
        )
        return results

    return evaluate
