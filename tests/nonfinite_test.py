"""A non-finite loss stops training naming the step and term, or is skipped on request."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import losses, methods, runs, train

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
