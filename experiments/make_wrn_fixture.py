"""Writes tests/testdata/official_wrn28_2.npz: the official CoMatch WRN-28-2's outputs.

The weight-transplant test (tests/torch_weights_test.py) loads this fixture with NumPy only,
converts the state dict with comatch_jax.core.torch_weights and compares our Flax WRN-28-2's
outputs with the official PyTorch definition's. Run once, with CPU torch installed (no JAX
needed) and the official repository fetched into the git-ignored third_party/ folder:

  git clone https://github.com/salesforce/CoMatch third_party/CoMatch   # never committed
  pip install torch==2.13.0                                            # the CPU build
  python experiments/make_wrn_fixture.py

The official definition (third_party/CoMatch/WideResNet.py) is imported at run time, never
copied. The model is random-initialised by its own init_weight; the BatchNorm affine
parameters are then randomised and the running statistics set to a calibration batch's
statistics, perturbed, so that evaluation mode exercises them on realistic scales. The reference outputs are computed in float64 from the float32 weights.

Fixture keys: 'state/<name>' (the float32 state dict, num_batches_tracked included),
'input' (float32 [8, 32, 32, 3], NHWC), 'eval_logits' [8, 10], 'eval_embedding' [8, 64]
(eval mode), 'train_logits' (train mode, from the random running statistics),
'official/<bn>.running_{mean,var}' (running statistics after ONE train-mode forward with the
official momentum 0.001) and 'batch/<bn>.running_{mean,var}' (the same forward with
momentum 1: the batch mean and unbiased batch variance of every BatchNorm).
"""

import argparse
import copy
import os
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", default=os.path.join(REPO, "third_party", "CoMatch"))
    parser.add_argument(
        "--out", default=os.path.join(REPO, "tests", "testdata", "official_wrn28_2.npz")
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sys.path.insert(0, args.official)
    from WideResNet import WideResnet  # the official definition, imported at run time

    torch.manual_seed(args.seed)
    model = WideResnet(n_classes=10, k=2, n=28, low_dim=64, proj=True)
    generator = torch.Generator().manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed)
    # Realistic running statistics: the batch statistics of a calibration batch (one
    # train-mode forward with momentum 1), then perturbed; random affine parameters.
    calibration = torch.from_numpy(rng.normal(size=(16, 3, 32, 32)).astype(np.float32))
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in batch_norms:
            channels = module.num_features
            module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
            module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
            module.momentum = 1.0
        model.train()(calibration)
        for module in batch_norms:
            channels = module.num_features
            module.momentum = 0.001  # back to the official value
            module.running_mean.add_(0.1 * torch.randn(channels, generator=generator))
            module.running_var.mul_(0.8 + 0.4 * torch.rand(channels, generator=generator))
            module.num_batches_tracked.zero_()
    state = {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}

    images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2)).double()

    fixture = {f"state/{name}": value for name, value in state.items()}
    fixture["input"] = images
    reference = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits, embedding = reference(x)
    fixture["eval_logits"] = logits.numpy()
    fixture["eval_embedding"] = embedding.numpy()

    for tag, momentum in (("official", None), ("batch", 1.0)):
        trained = copy.deepcopy(model).double().train()
        for module in trained.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.momentum == 0.001  # the official value
                if momentum is not None:
                    module.momentum = momentum
        with torch.no_grad():
            logits, _ = trained(x)
        if tag == "official":
            fixture["train_logits"] = logits.numpy()
        for name, value in trained.state_dict().items():
            if name.endswith(("running_mean", "running_var")):
                fixture[f"{tag}/{name}"] = value.numpy()

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez_compressed(args.out, **fixture)
    size = os.path.getsize(args.out) / 2**20
    count = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    print(f"wrote {args.out} ({size:.1f} MiB, {count} parameters and buffers)")


if __name__ == "__main__":
    main()
