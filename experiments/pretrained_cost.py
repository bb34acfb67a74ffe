"""Evidence for model.init_from_torch (experiments/RESULTS.md, "Pretrained backbones").

1. Conversion checks: max |ours - torch| of eval-mode features / logits per architecture,
   from the fixtures the torch scripts wrote (tests/testdata/torchvision_resnet.npz,
   official_wrn28_2.npz). 2. Cost of the path on random weights (no download possible
   here): a ResNet-50 torchvision state dict as .safetensors, then in a fresh process
   load_state_dict + convert + the one-time model.init, timed, with the peak resident memory
   (ru_maxrss) before and after. Run: python experiments/pretrained_cost.py
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "tests", "testdata")


def _status_mb(field):
    """VmHWM (peak) or VmRSS (current) of this process in MiB (ru_maxrss would include the
    parent's peak: Linux keeps it across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(path, depth):
    """Runs in a fresh process: the numbers of one init_from_torch load."""
    import jax
    import jax.numpy as jnp

    from comatch_jax import config_lib
    from comatch_jax.core import models, torch_weights

    config = config_lib.base_config().model
    config.update(name="resnet", depth=depth, stem="imagenet")
    model = models.create_model(config, num_classes=10)
    t0 = time.perf_counter()
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 96, 96, 3)), train=False))
    template = jax.device_get(init(jax.random.PRNGKey(0)))
    t1 = time.perf_counter()
    rss_before, peak_before = _status_mb("VmRSS"), _status_mb("VmHWM")
    state = torch_weights.load_state_dict(path)
    t2 = time.perf_counter()
    variables, report = torch_weights.convert(state, "resnet", template, depth=depth, log=None)
    t3 = time.perf_counter()
    return {
        "file_mb": os.path.getsize(path) / 2**20,
        "tensors_loaded": len(report.loaded),
        "init_s": t1 - t0,
        "read_s": t2 - t1,
        "convert_s": t3 - t2,
        "rss_mb_before_load": rss_before,
        "peak_mb_before_load": peak_before,
        "peak_mb_after_convert": _status_mb("VmHWM"),
    }


def conversion_checks():
    import jax
    import jax.numpy as jnp

    from comatch_jax import config_lib
    from comatch_jax.core import models, torch_weights

    rows = []
    with np.load(os.path.join(TESTDATA, "torchvision_resnet.npz")) as data:
        for depth in (18, 50):
            config = config_lib.base_config().model
            config.update(name="resnet", depth=depth, stem="imagenet")
            model = models.create_model(config, num_classes=1000)
            template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
            state = torch_weights.random_resnet_state_dict(depth, seed=depth)
            variables, _ = torch_weights.convert(state, "resnet", template, depth=depth, log=None)
            out = model.apply(variables, jnp.asarray(data[f"resnet{depth}/input"]), train=False)
            rows.append(
                (
                    f"torchvision/timm ResNet-{depth}",
                    float(np.abs(out["features"] - data[f"resnet{depth}/features"]).max()),
                    float(np.abs(out["logits"] - data[f"resnet{depth}/logits"]).max()),
                )
            )
    with np.load(os.path.join(TESTDATA, "official_wrn28_2.npz")) as data:
        config = config_lib.base_config().model
        config.update(name="wide_resnet", depth=28, widen_factor=2, low_dim=64)
        model = models.create_model(config, num_classes=10)
        template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
        state = {k[6:]: data[k] for k in data.files if k.startswith("state/")}
        variables, _ = torch_weights.convert(
            state, "wide_resnet", template, depth=28, widen_factor=2, log=None
        )
        out = model.apply(variables, jnp.asarray(data["input"]), train=False)
        rows.append(
            (
                "official CoMatch WRN-28-2",
                float(np.abs(out["embedding"] - data["eval_embedding"]).max()),
                float(np.abs(out["logits"] - data["eval_logits"]).max()),
            )
        )
    return rows


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return
    for name, features, logits in conversion_checks():
        print(f"{name}: max |diff| features/embedding {features:.2e}, logits {logits:.2e}")
    from safetensors.numpy import save_file

    from comatch_jax.core import torch_weights

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet50.safetensors")
        save_file(torch_weights.random_resnet_state_dict(50), path)
        result = subprocess.run(
            [sys.executable, __file__, "--measure", path, "50"],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.path.join(HERE, "..")},
        )
        print("ResNet-50 random weights:", result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
