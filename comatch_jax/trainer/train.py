"""The trainer: one loop for every method, with evaluation, logging and checkpoints.

`train_and_evaluate(config, workdir)` builds everything from the config, resumes from the
latest checkpoint in `workdir` if there is one, trains, and returns the final state and a
summary. What it calls lives elsewhere: the data (training_data), the workdir and its
checkpoints (runs), evaluation (evaluation), metrics (training_metrics, metric_writing),
several processes (multihost), the pure step (train_step).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from comatch_jax import atomic_files, config_lib, multihost
from comatch_jax.core import evaluation, train_step
from comatch_jax.data import pipeline as training_data
from comatch_jax.trainer import pretrained, saved_runs as runs, training_metrics
from comatch_jax.trainer.stopping import Stopped, TerminationRequest
from comatch_jax.core.train_state import TrainState


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, sampling key), typed PRNG keys: the first initialises the TrainState
    (whose own key drives the augmentations), the second draws the batches."""
    init_key, sampling_key = jax.random.split(jax.random.key(seed))
    return init_key, sampling_key


def stop_cause(termination: TerminationRequest) -> str:
    """What stopped the run, for the stop message: the signal (one process), or JAX's
    preemption notice (several processes; a SIGTERM or Ctrl-C to any of them)."""
    if termination.multiprocess:
        return "a preemption notice (SIGTERM or Ctrl-C to one of the processes)"
    return termination.signal_name


def _stopped(termination: TerminationRequest, step: int) -> Stopped:
    """The stop after the checkpoint at `step`: exit status 128 + the signal's number (one
    process), 128 + SIGTERM for a preemption notice (several processes: every process exits
    alike, whichever of them got the signal and which signal it was)."""
    signum = signal.SIGTERM if termination.multiprocess else termination.signum
    return Stopped(
        f"Stopped by {stop_cause(termination)} at step {step} after a checkpoint; rerun the "
        "same command to resume.",
        signum or signal.SIGTERM,
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    writer: Any = None,
    dataset: Any = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains `config.method` and evaluates the EMA model; resumes from `workdir`.

    Returns the final state and a summary (final test accuracy of the EMA and raw models,
    steps, training time summed over resumes, data source). A workdir whose run is already
    finished (its checkpoint at num_steps, summary.json written) is left as it is: the saved
    state and summary are returned. A SIGTERM or Ctrl-C at the final step lets the run
    finish normally. Scalars go to `writer` (default: clu's TensorBoard + log
    writer) and to workdir/metrics.jsonl, prefixed `train/` and `eval/`. `dataset` (an
    datasets.ImageDataset) defaults to loading config.dataset. Raises ValueError for
    a bad config, data or workdir, FloatingPointError for a non-finite loss, and
    termination.Stopped (a SystemExit: the one line, exit_status 128 + the signal's number)
    after the checkpoint a SIGTERM or Ctrl-C asked for.
    """
    config_lib.validate_config(config)
    # The data first: problems with it (and a mean/std that does not fit it) are reported
    # before the run claims its workdir.
    data = training_data.prepare_data_in_turn(config, dataset)
    data = pretrained.with_pretrained_normalization(config, data)  # ImageNet's for torch weights
    config = training_data.with_normalization(config, data)
    runs.check_workdir(config, workdir, fingerprint=data.fingerprint)
    multihost.barrier("workdir checked")  # before process 0 writes into it
    atomic_files.make_directory(workdir, "workdir")
    image_shape = data.labeled_images.shape[1:]
    mesh = multihost.data_parallel_mesh()
    method, model, tx, init_state = runs.build_training(
        config, data.num_classes, image_shape, num_devices=mesh.size
    )
    if config.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise ValueError(
            f"batch_size ({config.batch_size}) and eval_batch_size ({config.eval_batch_size}) "
            f"must be multiples of the {mesh.size} devices the batch is sharded over"
            f" ({jax.process_count()} process(es))."
        )
    # Params, EMA, queue and optimizer state are replicated; every batch is sharded.
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))

    checkpoints = runs.checkpoint_manager(workdir, max_to_keep=config.keep_checkpoints)
    # Closed on every exit (normal end, error, signal): an asynchronous save that has
    # started is finished first, so the workdir never keeps a half-written checkpoint.
    try:
        init_key, _ = run_keys(config.seed)
        latest = checkpoints.latest_step()
        earlier_seconds = 0.0  # training time of the processes before this one (resumes)
        if latest is not None:
            target = runs.abstract_state(init_state, replicated)
            state = runs.restore_state(checkpoints, latest, target, workdir)
            earlier_seconds = runs.train_seconds_at(checkpoints, latest)
            # A finished run (runs.check_workdir refused a num_steps below its step): its
            # records stay as they are.
            finished = _summary_of_finished_run(workdir, latest)
            if latest >= config.num_steps and finished is not None:
                logging.warning(
                    "The run in %s is already finished at step %d (final test accuracy %.4f "
                    "EMA, %.4f raw model%s); nothing to do.",
                    workdir,
                    latest,
                    finished["test_accuracy"],
                    finished["test_accuracy_raw"],
                    " by kNN on frozen features" if finished.get("evaluation") == "knn" else "",
                )
                return state, finished
            logging.info("Resumed from the checkpoint of step %d in %s", latest, workdir)
        else:
            state = jax.jit(lambda: init_state(init_key), out_shardings=replicated)()
            if config.init_from:
                state = runs.initialise_backbone_from(state, config.init_from, sharding=replicated)
            if config.model.get("init_from_torch"):
                state = pretrained.initialise_from_torch(state, config, sharding=replicated)
        runs.save_run(
            config,
            workdir,
            num_classes=data.num_classes,
            class_names=data.class_names,
            image_shape=image_shape,
            source=data.source,
            fingerprint=data.fingerprint,
        )
        from comatch_jax.trainer import metric_writing  # clu's writers import TensorFlow

        writer = metric_writing.create_writer(
            workdir, primary=multihost.is_primary(), writer=writer
        )
        step_fn = train_step.make_train_step(model=model, tx=tx, method=method, config=config)
        jitted_step, next_input, on_host = training_data.step_with_input(
            config, data, step_fn, run_keys(config.seed)[1], replicated, batch_sharding
        )
        accuracy_of = _test_accuracy(config, model, method, data, replicated, batch_sharding)
        images_per_step = config.batch_size * len(method.labeled_views) + (
            config.batch_size * config.mu * len(method.unlabeled_views)
        )
        knn_note = " by kNN on frozen features" if method.evaluation == "self_supervised" else ""

        def run_eval(step: int) -> dict[str, float]:
            ema = accuracy_of(state.ema_params, state.ema_batch_stats)
            raw = accuracy_of(state.params, state.batch_stats)
            results = {"test_accuracy": ema["accuracy"], "test_accuracy_raw": raw["accuracy"]}
            if "nll" in ema:
                results["test_nll"] = ema["nll"]
            writer.write_scalars(step, training_metrics.prefixed(training_metrics.EVAL, results))
            logging.info(
                "step %d: test accuracy %.4f (EMA), %.4f (raw model)%s",
                step,
                ema["accuracy"],
                raw["accuracy"],
                knn_note,
            )
            return results

        start_step = step = int(jax.device_get(state.step))
        pending: list[dict[str, jax.Array]] = []  # the step metrics since the last log, on device
        results: dict[str, float] = {}
        train_start, eval_seconds = time.time(), 0.0
        train_seconds = lambda: earlier_seconds + time.time() - train_start
        # Throughput and ETA: training only.
        training_clock = lambda: time.monotonic() - eval_seconds
        progress = metric_writing.Progress(
            start_step=start_step, num_steps=config.num_steps, t=training_clock()
        )
        skipped_total = 0  # steps whose update nonfinite_policy='skip' rejected
        multiprocess = jax.process_count() > 1
        # Without ground truth for the unlabeled images (an image folder) the pseudo-label
        # accuracy is unknown, so it is not logged (rather than shown as 0).
        truth_known = bool(np.any(np.asarray(data.unlabeled_labels) >= 0))
        with contextlib.ExitStack() as stack:
            termination = stack.enter_context(TerminationRequest(multiprocess=multiprocess))
            if on_host:  # the next batches are gathered and transferred while a step runs
                next_input = stack.enter_context(
                    training_data.Prefetcher(
                        next_input, start_step=start_step, stop_step=config.num_steps, depth=2
                    )
                ).get

            def stop_requested() -> bool:
                """One process: a signal seen at any time. Several: JAX's preemption sync
                point (every process calls this once per step, at the same steps, from the
                same start step), reached a step or so after any process got a SIGTERM."""
                if not multiprocess:
                    return termination.requested
                if checkpoints.reached_preemption(step):
                    termination.on_preemption()
                    return True
                return False

            # Several processes: each tells the preemption service its start step (the same
            # on all), so a SIGTERM received during start-up stops them at the next step.
            if multiprocess and stop_requested():
                if checkpoints.latest_step() != step:
                    runs.save_checkpoint(checkpoints, step, state, train_seconds())
                checkpoints.wait_until_finished()
                raise _stopped(termination, step)
            while step < config.num_steps:
                state, metrics = jitted_step(state, next_input(step))
                pending.append(metrics)
                step += 1
                if step == start_step + 1:  # speed and ETA leave out the first (compiling) step
                    jax.block_until_ready(metrics)
                    progress.restart(step, training_clock())
                final = step == config.num_steps
                # A stop asked for at the final step: the run finishes normally instead.
                stop = stop_requested() and not final
                save = step % config.checkpoint_every == 0 or final or stop
                if pending and (step % config.log_every == 0 or save):
                    # Metrics are checked before any checkpoint: a non-finite state is never saved.
                    window = len(pending)
                    means = training_metrics.average_over_steps(jax.device_get(pending))
                    pending = []
                    training_metrics.check_finite(
                        step, means, config.nonfinite_policy, lambda: _last_complete(checkpoints)
                    )
                    if not truth_known:
                        means.pop("pseudo_label_acc", None)
                    skipped_total += _warn_if_all_skipped(means, window, step)
                    steps_per_sec, eta = progress.report(step, training_clock())
                    if np.isfinite(steps_per_sec):  # not known at the first step
                        means["steps_per_sec"] = steps_per_sec
                        means["images_per_sec"] = steps_per_sec * images_per_step
                    writer.write_scalars(
                        step, training_metrics.prefixed(training_metrics.TRAIN, means)
                    )
                    logging.info(
                        "%s",
                        training_metrics.progress_line(
                            step,
                            config.num_steps,
                            means,
                            means.get("images_per_sec", float("nan")),
                            eta,
                        ),
                    )
                if step % config.eval_every == 0 or final:
                    eval_start = time.monotonic()
                    results = run_eval(step)
                    eval_seconds += time.monotonic() - eval_start
                # One process: a signal may arrive during logging or evaluation.
                stop = stop or (not multiprocess and termination.requested and not final)
                if final and termination.requested:
                    logging.warning(
                        "%s received at the final step %d: finishing the run normally.",
                        stop_cause(termination),
                        step,
                    )
                if save or stop:
                    runs.save_checkpoint(checkpoints, step, state, train_seconds())
                if stop:
                    checkpoints.wait_until_finished()
                    raise _stopped(termination, step)
        checkpoints.wait_until_finished()
        _check_skipped(skipped_total, step - start_step, step)
        if not results:
            results = run_eval(step)
        writer.flush()
        summary = {
            "final_step": step,
            "evaluation": "knn" if method.evaluation == "self_supervised" else "classifier",
            "test_accuracy": results["test_accuracy"],
            "test_accuracy_raw": results["test_accuracy_raw"],
            "train_seconds": train_seconds(),
            "skipped_steps": skipped_total,
            "data_source": data.source,
        }
    finally:
        checkpoints.close()
    runs.save_json(workdir, "summary.json", summary)
    logging.info("Final test accuracy (EMA model): %.4f", summary["test_accuracy"])
    return state, summary


def _summary_of_finished_run(workdir: str, step: int) -> dict[str, Any] | None:
    """workdir/summary.json when it is that of a run finished at `step`, else None."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary if summary.get("final_step") == step else None


def _warn_if_all_skipped(means: dict[str, float], window: int, step: int) -> int:
    """The number of skipped steps among the `window` steps of a log (nonfinite_policy=
    'skip'), with a warning when it is all of them."""
    skipped = int(means.get("skipped_steps", 0))
    if skipped == window:
        logging.warning(
            "Every step since the last log (up to %d) had a non-finite loss or gradient and "
            "was skipped (nonfinite_policy=skip): the parameters did not change.",
            step,
        )
    return skipped


def _check_skipped(skipped: int, steps_run: int, step: int) -> None:
    """After the loop: a warning naming how many of this run's steps were skipped
    (nonfinite_policy='skip'), saying so plainly when it was all of them."""
    if not skipped:
        return
    if skipped >= steps_run:
        logging.warning(
            "Every one of the %d steps this run made (up to %d) had a non-finite loss or "
            "gradient and was skipped (nonfinite_policy=skip): the model did not train in "
            "it. Check the inputs, or train in a new --workdir with a lower --config.optim.lr.",
            steps_run,
            step,
        )
    else:
        logging.warning(
            "%d of the %d steps were skipped for a non-finite loss or gradient "
            "(nonfinite_policy=skip).",
            skipped,
            steps_run,
        )


def _last_complete(checkpoints: Any) -> int | None:
    """The step of the last complete checkpoint (waits for an asynchronous save), or None."""
    checkpoints.wait_until_finished()
    return checkpoints.latest_step()


def _test_accuracy(
    config: ml_collections.ConfigDict,
    model: Any,
    method: Any,
    data: training_data.SemiSupervisedData,
    replicated: NamedSharding,
    batch_sharding: NamedSharding,
) -> Callable[[Any, Any], dict[str, float]]:
    """accuracy_of(params, batch_stats) -> {'accuracy', and 'nll' for a classifier}: the
    method's evaluation (its classifier, or kNN on frozen features when the classifier is
    untrained) on the test set."""
    if method.evaluation == "self_supervised":
        predict_batch = jax.jit(
            evaluation.make_predict_fn(model, config.dataset.mean, config.dataset.std)
        )
        return lambda params, batch_stats: evaluation.knn_evaluate(
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
    eval_step = jax.jit(
        train_step.make_eval_step(model, config),
        in_shardings=(replicated, replicated, batch_sharding, batch_sharding, batch_sharding),
    )
    return lambda params, batch_stats: evaluation.evaluate(
        eval_step,
        params,
        batch_stats,
        data.test_images,
        data.test_labels,
        config.eval_batch_size,
        sharding=batch_sharding,
    )
