"""Two CPU devices (forced) and one device run the same steps to the same numbers; per-device
BatchNorm on two devices is what two BatchNorm groups compute on one.

The device count and XLA's flags are fixed when a process starts JAX, so the runs go in one
process per (device count, flags): two devices under the suite's flags, one device under
them (this test process), and one device with XLA's default fusions."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from comatch_jax import cli
from comatch_jax.core import models
from comatch_jax.trainer import train
from train_test import RecordingWriter, synthetic_dataset, tiny_config


def train_tiny(workdir, batch_norm="global", groups=0):
    """tiny_config("comatch") with `batch_norm`, trained in this process; groups > 0:
    per-device BatchNorm of that many devices, emulated on one. Returns its logged losses
    and final params, flat."""
    config = tiny_config("comatch")
    config.model.batch_norm = batch_norm
    create_model = models.create_model
    if groups:
        models.create_model = lambda *a, **k: create_model(*a, **{**k, "num_devices": groups})
    try:
        writer = RecordingWriter()
        state, _ = train.train_and_evaluate(
            config, str(workdir), writer=writer, dataset=synthetic_dataset()
        )
    finally:
        models.create_model = create_model
    losses = [s["train/loss"] for _, s in writer.scalars if "train/loss" in s]
    leaves = jax.tree.leaves(jax.device_get(state.params))
    return {"losses": np.array(losses), "params": np.concatenate([np.ravel(x) for x in leaves])}


# train_tiny once per entry of {runs} (name -> (batch_norm, groups)), each result saved to
# {out}/NAME.npz.
SCRIPT = """
import sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from multi_device_test import train_tiny
assert jax.local_device_count() == {devices}
for name, (batch_norm, groups) in {runs!r}.items():
    np.savez({out!r} + "/" + name + ".npz", **train_tiny({out!r} + "/" + name, batch_norm, groups))
"""


def _subprocess_runs(out, devices, runs, xla_defaults=False):
    """`runs` in one process with `devices` forced CPU devices, under the suite's XLA flags
    (tests/conftest.py) or, with xla_defaults, without comatch_jax's YNNPACK flag: XLA's own
    fusions at the suite's LLVM level. Returns name -> {losses, params}."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    env = dict(os.environ)
    if xla_defaults:
        flags = [flag for flag in flags if "ynn_fusion_type" not in flag]
        env["COMATCH_JAX_KEEP_XLA_FLAGS"] = "1"
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    tests = os.path.dirname(os.path.abspath(__file__))
    code = SCRIPT.format(tests=tests, devices=devices, runs=runs, out=str(out))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: np.load(out / f"{name}.npz") for name in runs}


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """Two devices, the suite's flags: global and per-device BatchNorm."""
    runs = {"global": ("global", 0), "per_device": ("per_device", 0)}
    return _subprocess_runs(tmp_path_factory.mktemp("two_devices"), 2, runs)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """One device, this test process (the suite's flags): global BatchNorm."""
    return train_tiny(tmp_path_factory.mktemp("one_device"))


@pytest.fixture(scope="module")
def one_device_xla_defaults(tmp_path_factory):
    """One device, XLA's default fusions: global BatchNorm, and per-device BatchNorm of two
    devices emulated as two groups. Under comatch_jax's YNNPACK flag XLA:CPU computes that
    emulation wrongly (experiments/RESULTS.md, "CPU step"), so it runs without it."""
    runs = {"global": ("global", 0), "two_groups": ("per_device", 2)}
    directory = tmp_path_factory.mktemp("one_device_xla_defaults")
    return _subprocess_runs(directory, 1, runs, xla_defaults=True)


def test_two_devices_match_one_device(two_devices, one_device):
    np.testing.assert_allclose(
        one_device["losses"], two_devices["global"]["losses"], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        one_device["params"], two_devices["global"]["params"], rtol=1e-3, atol=1e-5
    )


@pytest.mark.skipif(not cli.measured_jaxlib(), reason="the suite sets no YNNPACK flag here")
def test_the_default_xla_cpu_flag_computes_what_xla_defaults_compute(
    one_device, one_device_xla_defaults
):
    """comatch_jax's default XLA:CPU flag (YNNPACK for dots), which the entry points and this
    suite use, computes what XLA's defaults do (measured: within ~1e-6): the emulation
    below, which needs XLA's defaults, is then compared with what users run."""
    assert cli.DEFAULT_CPU_FLAG in os.environ["XLA_FLAGS"]
    defaults = one_device_xla_defaults["global"]
    np.testing.assert_allclose(one_device["losses"], defaults["losses"], rtol=1e-5)
    np.testing.assert_allclose(one_device["params"], defaults["params"], rtol=1e-4, atol=1e-5)


def test_per_device_batch_norm_on_two_devices_matches_two_groups_on_one(
    two_devices, one_device_xla_defaults
):
    """model.batch_norm='per_device': each device normalises its own shard. Two real devices
    compute what one device computes with the batch split into two BatchNorm groups, and
    that differs from global (synchronised) statistics."""
    two, emulated = two_devices["per_device"], one_device_xla_defaults["two_groups"]
    np.testing.assert_allclose(two["losses"], emulated["losses"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["params"], emulated["params"], rtol=1e-3, atol=1e-5)
    assert np.abs(two["losses"] - two_devices["global"]["losses"]).max() > 1e-4
