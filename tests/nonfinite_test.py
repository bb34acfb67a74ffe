"""A non-finite loss stops training naming the step and term, or is skipped on request."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from comatch_jax.core import losses, methods, train_state, train_step
from comatch_jax.trainer import saved_runs as runs, train

from train_test import RecordingWriter, synthetic_dataset, tiny_config


def _nan_from_fourth_step_loss(outputs, batch, state, config):
    loss = losses.cross_entropy(outputs["labeled_weak"]["logits"], batch["labels"])
    loss = loss + jnp.where(state["count"] >= 3, jnp.nan, 0.0)
    return loss, ({"count": state["count"] + 1}, {"loss_x": loss})


@pytest.fixture
def nan_method(monkeypatch):
    method = methods.Method(
        "nan_test",
        ("weak",),
        (),
        lambda *_: {"count": jnp.zeros((), jnp.int32)},
        _nan_from_fourth_step_loss,
    )
    monkeypatch.setitem(methods.METHODS, "nan_test", method)


def _config(policy):
    config = tiny_config("supervised")
    config.method = "nan_test"
    config.log_every = 5
    config.checkpoint_every = 2
    config.nonfinite_policy = policy
    return config


def test_nonfinite_loss_stops_with_step_and_term_and_keeps_last_checkpoint(tmp_path, nan_method):
    with pytest.raises(FloatingPointError, match=r"Non-finite loss, loss_x.*up to 4"):
        train.train_and_evaluate(
            _config("stop"), str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    run = runs.load_run(str(tmp_path))
    assert int(run.state.step) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.state.params))


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path, nan_method):
    writer = RecordingWriter()
    state, _ = train.train_and_evaluate(
        _config("skip"), str(tmp_path), writer=writer, dataset=synthetic_dataset()
    )
    assert int(state.step) == 6
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    skipped = sum(s["train/skipped_steps"] for _, s in writer.scalars if "train/skipped_steps" in s)
    assert skipped == 3


def nan_gradients_from_fourth_step_loss(outputs, batch, state, config):
    """Cross-entropy plus sqrt(u), u = (s - s) + (1 before the 4th step, 0 from it), s the
    logits' sum: the loss stays finite but from the 4th step d sqrt(u)/du = inf times du/ds = 0
    makes every gradient NaN (a NaN that reaches the gradients, not the loss)."""
    logits = outputs["labeled_weak"]["logits"]
    offset = jnp.where(state["count"] >= 3, 0.0, 1.0)
    term = jnp.sqrt(logits.sum() - logits.sum() + offset) - jnp.sqrt(offset)
    loss = losses.cross_entropy(logits, batch["labels"]) + term
    return loss, ({"count": state["count"] + 1}, {"loss_x": loss})


@pytest.fixture
def nan_gradient_method(monkeypatch):
    method = methods.Method(
        "nan_grad_test",
        ("weak",),
        (),
        lambda *_: {"count": jnp.zeros((), jnp.int32)},
        nan_gradients_from_fourth_step_loss,
    )
    monkeypatch.setitem(methods.METHODS, "nan_grad_test", method)


def _nan_gradient_config(policy):
    config = _config(policy)
    config.method = "nan_grad_test"
    config.num_steps = 10
    config.checkpoint_every = 3
    config.optim.schedule = "cosine"  # the rate changes every step
    return config


def test_skip_keeps_the_state_when_whole_logging_windows_have_nan_gradients(
    tmp_path, nan_gradient_method, caplog
):
    writer = RecordingWriter()
    config = _nan_gradient_config("skip")
    config.keep_checkpoints = 4  # keeps step 3's
    with caplog.at_level("WARNING"):
        state, summary = train.train_and_evaluate(
            config, str(tmp_path), writer=writer, dataset=synthetic_dataset()
        )
    # Said, not only counted: each wholly skipped window, and the total at the end.
    assert "Every step since the last log (up to 5)" in caplog.text
    assert "7 of the 10 steps this run made (up to 10) were skipped" in caplog.text
    assert summary["skipped_steps"] == 7
    logged = {step: scalars for step, scalars in writer.scalars if "train/loss" in scalars}
    # Logged at 3, 5, 6, 9, 10 (and saved at 3, 6, 9, 10): every window after step 3 is
    # wholly skipped, yet training goes on.
    assert sorted(logged) == [3, 5, 6, 9, 10]
    assert [logged[s]["train/skipped_steps"] for s in (5, 6, 9, 10)] == [2, 1, 3, 1]
    # The logged norm is that of the kept params, the ones of step 3.
    assert int(state.step) == 10
    kept = runs.load_run(str(tmp_path), step=3).state.params
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(kept)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(
        logged[10]["train/param_norm"], float(optax.tree.norm(state.params)), rtol=1e-6
    )
    # The optimizer counted 3 updates; the logged rate is the one it applied (at count 3).
    assert int(train_step.schedule_count(state.opt_state)) == 3
    schedule = train_state.learning_rate_schedule(config)
    np.testing.assert_allclose(logged[10]["train/learning_rate"], float(schedule(3)), rtol=1e-6)


def test_the_advice_after_a_nonfinite_stop_resumes_the_run(tmp_path, nan_gradient_method, caplog):
    workdir = str(tmp_path)
    with pytest.raises(FloatingPointError, match="grad_norm") as error:
        train.train_and_evaluate(
            _nan_gradient_config("stop"),
            workdir,
            writer=RecordingWriter(),
            dataset=synthetic_dataset(),
        )
    message = str(error.value)
    assert "--config.optim.lr" in message and "--config.nonfinite_policy=skip" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    # A lower rate and a larger num_steps are accepted, and said.
    lower = _nan_gradient_config("stop")
    lower.optim.lr = 0.01
    lower.num_steps = 20
    with open(os.path.join(workdir, "config.json")) as f:  # the trainer resolves mean/std
        saved = json.load(f)["dataset"]
    lower.dataset.mean, lower.dataset.std = tuple(saved["mean"]), tuple(saved["std"])
    with caplog.at_level("WARNING"):
        runs.check_workdir(lower, workdir)
    assert "num_steps=20 (was 10), optim.lr=0.01 (was 0.05)" in caplog.text
    # The advised skip policy resumes from step 3 and finishes.
    state, summary = train.train_and_evaluate(
        _nan_gradient_config("skip"), workdir, writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    assert int(state.step) == 10 and np.isfinite(summary["test_accuracy"])
    # What changes what is trained is still refused, naming what may change.
    other = _nan_gradient_config("skip")
    other.optim.momentum = 0.5
    other.dataset.mean, other.dataset.std = lower.dataset.mean, lower.dataset.std
    with pytest.raises(ValueError, match=r"different config \(optim.momentum\).*optim.lr"):
        runs.check_workdir(other, workdir)


def _nan_gradients_always_loss(outputs, batch, state, config):
    """Finite loss, NaN gradients at every step (d sqrt(u)/du at u = 0 times du/ds = 0)."""
    logits = outputs["labeled_weak"]["logits"]
    loss = losses.cross_entropy(logits, batch["labels"]) + jnp.sqrt(logits.sum() - logits.sum())
    return loss, (state, {"loss_x": loss})


def test_a_run_whose_every_step_is_skipped_says_so(tmp_path, monkeypatch, caplog):
    method = methods.Method("nan_always", ("weak",), (), lambda *_: {}, _nan_gradients_always_loss)
    monkeypatch.setitem(methods.METHODS, "nan_always", method)
    config = _config("skip")
    config.method = "nan_always"
    with caplog.at_level("WARNING"):
        state, summary = train.train_and_evaluate(
            config, str(tmp_path), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
    assert "6 of the 6 steps this run made (up to 6) were skipped" in caplog.text
    assert "the model did not train" in caplog.text and summary["skipped_steps"] == 6
    assert int(state.step) == 6
