"""A few steps of every method's tiny config run with finite losses; pretrain -> fine-tune
and pretrain -> probe work end to end."""

import json

import jax
import numpy as np
import pytest

from comatch_jax import config_lib, methods, probe, train

from train_test import RecordingWriter, synthetic_dataset, tiny_config

SSL_MODEL = dict(projector_widths=(16, 16), predictor_widths=(8, 16), decoder=True, decoder_width=8)


def method_config(name):
    config = tiny_config("comatch")
    config.method = name
    config.num_steps = 4
    config.eval_every = 4
    config.checkpoint_every = 4
    config.probe.knn_k = 5
    config.probe.linear_steps = 20
    config.model.update(SSL_MODEL)
    if methods.get_method(name).evaluation == "self_supervised":
        config.augment.strong0 = config.augment.strong1 = "simclr"
    if name == "supervised":
        config.mu = 0
    return config


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_each_method_trains_with_finite_losses(tmp_path, name):
    writer = RecordingWriter()
    state, summary = train.train_and_evaluate(
        method_config(name), str(tmp_path), writer=writer, dataset=synthetic_dataset()
    )
    logged = [s for _, s in writer.scalars if "loss" in s]
    assert logged and all(np.isfinite(v) for s in logged for v in s.values())
    assert int(state.step) == 4
    expected = "knn" if methods.get_method(name).evaluation == "self_supervised" else "classifier"
    assert summary["evaluation"] == expected
    assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_pretrain_then_finetune_and_probe(tmp_path):
    pretrain = str(tmp_path / "pretrain")
    train.train_and_evaluate(
        method_config("barlow_twins"),
        pretrain,
        writer=RecordingWriter(),
        dataset=synthetic_dataset(),
    )
    finetune = method_config("supervised")
    finetune.init_from = pretrain
    state, _ = train.train_and_evaluate(
        finetune, str(tmp_path / "ft"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    assert int(state.step) == 4

    # With lr 0 and no weight decay the fine-tuned backbone stays the pretrained one.
    frozen = method_config("supervised")
    frozen.init_from = pretrain
    frozen.optim.lr = 0.0
    frozen.optim.weight_decay = 0.0
    state, _ = train.train_and_evaluate(
        frozen, str(tmp_path / "ft0"), writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    pretrained = train.load_run(pretrain).state.ema_params["backbone"]
    for a, b in zip(jax.tree.leaves(pretrained), jax.tree.leaves(state.params["backbone"])):
        np.testing.assert_array_equal(a, b)

    results = probe.probe_run(pretrain, "all", batch_size=16, dataset=synthetic_dataset())
    assert 0.0 <= results["knn_accuracy"] <= 1.0 and 0.0 <= results["linear_probe_accuracy"] <= 1.0
    assert json.load(open(f"{pretrain}/probe.json"))["num_labeled"] == 20


def test_finetune_config_requires_init_from():
    config = config_lib.base_config()
    config.init_from = ""
    with pytest.raises(ValueError, match="init_from"):
        config_lib.validate_config(config)


def test_finetune_from_a_different_backbone_is_a_clear_error(tmp_path):
    pretrain = str(tmp_path / "pretrain")
    train.train_and_evaluate(
        method_config("simclr"), pretrain, writer=RecordingWriter(), dataset=synthetic_dataset()
    )
    finetune = method_config("supervised")
    finetune.init_from = pretrain
    finetune.model.widths = (8, 32)
    with pytest.raises(ValueError, match="backbone does not match"):
        train.train_and_evaluate(
            finetune, str(tmp_path / "ft"), writer=RecordingWriter(), dataset=synthetic_dataset()
        )
