"""Two CPU devices (forced) and one device run the same steps to the same numbers."""

import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
from train_test import tiny_config, synthetic_dataset, RecordingWriter
from comatch_jax import train
assert jax.local_device_count() == {devices}
writer = RecordingWriter()
state, summary = train.train_and_evaluate(tiny_config(), {workdir!r}, writer=writer, dataset=synthetic_dataset())
losses = [s["loss"] for _, s in writer.scalars if "loss" in s]
leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(jax.device_get(state.params))]
np.savez({out!r}, losses=np.array(losses), params=np.concatenate(leaves))
"""


def _run(tmp_path, devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = str(tmp_path / f"result{devices}.npz")
    code = SCRIPT.format(
        tests=os.path.dirname(os.path.abspath(__file__)),
        devices=devices,
        workdir=str(tmp_path / f"run{devices}"),
        out=out,
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def test_two_devices_match_one_device(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["params"], two["params"], rtol=1e-3, atol=1e-5)
