"""Runs the official CoMatch code (github salesforce/CoMatch) for experiments/gpu_evidence.py.

The official code is not part of this repository: put it in the git-ignored folder
third_party/CoMatch (e.g. `git --git-dir=<mirror> archive HEAD | tar -x -C third_party/CoMatch`).
Nothing of it is copied here. `patched_copy` copies the folder to a temporary directory and
applies, there, the two fixes it needs on torch 2 / NumPy 2 (PATCHES), each checked to match
exactly once so that a changed upstream file fails loudly instead of running unpatched.

Two measurements, each run in its own process by gpu_evidence (so that a part over its budget
can be killed with its DataLoader workers):

  end_to_end   Train_CoMatch.py's main() as shipped (its DataLoaders with 2 workers each, its
               cv2 / torchvision augmentations, its step, its evaluation and checkpoint after the
               epoch) for one epoch of --iters iterations on random uint8 images written in the
               CIFAR-10 python pickle format. Seconds per iteration from the wall-clock times of
               its LR scheduler's step() (called once per iteration, after the iteration's
               .item() calls synchronise the GPU), over the iterations after --warmup.
  step         its train_one_epoch (the train step: forward, CoMatch losses, backward, SGD,
               EMA, queue) fed ready-made GPU tensors instead of its loaders (no augmentation,
               no data loading), float32 as shipped, or bf16 autocast + channels_last +
               cudnn.benchmark ("tuned PyTorch").

Run-time adaptations (recorded in the JSON under "adaptations"): tensorboard_logger (a
logging-only dependency, absent on the GPU machine) is replaced by a module whose Logger
discards values; utils.AverageMeter sums in np.float64, so that train_one_epoch's
pseudo-label accuracy (0 / 0 on random images, where no pseudo-label is confident) is NaN
instead of a ZeroDivisionError; the step measurement replaces datasets.cifar (loaders it does not use,
which need torchvision and cv2); with --cpu (the CPU smoke only) Tensor.cuda / Module.cuda
return the object unchanged.

  python experiments/official_comatch.py end_to_end --code=DIR --out=x.json --iters=100
  python experiments/official_comatch.py step --code=DIR --out=x.json --precision=f32,bf16
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
import types

import numpy as np

# (file, text as shipped, replacement): the fixes for torch 2 and NumPy 2.
PATCHES = (
    (
        "datasets/sampler.py",
        "from torch._six import int_classes as _int_classes",
        "_int_classes = int  # torch._six is gone in torch 2 (run-time patch, gpu_evidence)",
    ),
    (
        "datasets/randaugment.py",
        "np.uint8(255 << (8 - bits))",
        "np.uint8((255 << (8 - bits)) & 255)",  # NumPy 2 refuses out-of-range uint8
    ),
)


def patched_copy(source: str, destination: str) -> list[str]:
    """Copies the official code from `source` to `destination` and applies PATCHES there.
    Returns a description of each patch. Raises FileNotFoundError for a missing folder and
    ValueError when a patch does not match exactly once (the upstream file changed)."""
    if not os.path.isfile(os.path.join(source, "Train_CoMatch.py")):
        raise FileNotFoundError(f"{source} has no Train_CoMatch.py (github salesforce/CoMatch)")
    shutil.copytree(source, destination)
    applied = []
    for name, old, new in PATCHES:
        path = os.path.join(destination, name)
        with open(path) as f:
            text = f.read()
        if text.count(old) != 1:
            raise ValueError(f"patch for {name} expected {old!r} once, found {text.count(old)}")
        with open(path, "w") as f:
            f.write(text.replace(old, new))
        applied.append(f"{name}: {old!r} -> {new!r}")
    return applied


def write_random_cifar10(root: str, *, train_per_batch: int, test_images: int, seed: int = 0):
    """Random uint8 images and labels (i % 10) in the CIFAR-10 python pickle format
    (root/cifar-10-batches-py/data_batch_1..5 and test_batch: dicts with 'data' uint8
    [n, 3072] channel-major rows and 'labels' lists), as the official loader reads them."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i + 1}" for i in range(5)] + ["test_batch"]
    for name in names:
        n = test_images if name == "test_batch" else train_per_batch
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(n)],
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)


def _adapt(code: str, cpu: bool) -> list[str]:
    """Imports the official modules from `code` with the run-time adaptations."""
    sys.path.insert(0, code)
    stub = types.ModuleType("tensorboard_logger")

    class Logger:  # tensorboard_logger.Logger's interface; values are discarded
        def __init__(self, *args, **kwargs):
            pass

        def log_value(self, *args, **kwargs):
            pass

    stub.Logger = Logger
    sys.modules["tensorboard_logger"] = stub
    adaptations = ["tensorboard_logger replaced by a Logger that discards values"]
    import utils  # the official utils.py

    shipped_update = utils.AverageMeter.update

    def update(self, val, n=1):
        shipped_update(self, np.float64(val), n)

    # On random images no pseudo-label passes tau in 100 iterations: train_one_epoch's
    # n_correct / n_confident is then 0 / 0, a NaN in float64 instead of ZeroDivisionError.
    utils.AverageMeter.update = update
    adaptations.append("AverageMeter sums in np.float64 (0/0 -> NaN, not ZeroDivisionError)")
    if cpu:
        import torch

        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
        adaptations.append("CPU smoke: Tensor.cuda / Module.cuda return the object unchanged")
    return adaptations


def _per_iteration(times: list[float], warmup: int) -> dict[str, float]:
    gaps = np.diff(np.asarray(times))[warmup:]
    return {
        "iteration_s_mean": float(np.mean(gaps)),
        "iteration_s_median": float(np.median(gaps)),
        "timed_iterations": int(len(gaps)),
    }


def end_to_end(args) -> dict:
    """Train_CoMatch.main() for one epoch of args.iters iterations (see the module doc)."""
    adaptations = _adapt(args.code, args.cpu)
    import torch
    import utils  # the official utils.py

    stamps: list[float] = []
    original_step = utils.WarmupCosineLrScheduler.step

    def timed_step(self, *a, **k):
        stamps.append(time.perf_counter())
        return original_step(self, *a, **k)

    utils.WarmupCosineLrScheduler.step = timed_step
    import Train_CoMatch

    os.chdir(args.workdir)  # its logs and checkpoint go under ./CIFAR10/...
    sys.argv = [
        "Train_CoMatch.py",
        f"--root={args.root}",
        "--n-epoches=1",
        f"--batchsize={args.batch_size}",
        f"--mu={args.mu}",
        f"--n-imgs-per-epoch={args.iters * args.batch_size}",
        "--n-labeled=40",
        "--exp-dir=gpu_evidence",
    ]
    start = time.perf_counter()
    Train_CoMatch.main()
    total = time.perf_counter() - start
    stamps = stamps[1:]  # the first call is the scheduler's constructor
    figures = _per_iteration(stamps, args.warmup)
    figures.update(
        iterations=args.iters,
        batch_size=args.batch_size,
        mu=args.mu,
        images_per_step=args.batch_size * (1 + 3 * args.mu),
        wall_s_including_startup_and_eval=total,
        torch=torch.__version__,
        adaptations=adaptations,
    )
    figures["images_per_s"] = figures["images_per_step"] / figures["iteration_s_mean"]
    return figures


def step(args) -> dict:
    """The official train_one_epoch on ready-made tensors (see the module doc)."""
    adaptations = _adapt(args.code, args.cpu)
    # The step does not use the loaders: its datasets.cifar (which needs torchvision and
    # cv2) is replaced by a module whose loaders raise.
    loaders = types.ModuleType("datasets.cifar")

    def no_loader(*args, **kwargs):
        raise RuntimeError("the step measurement uses no DataLoader")

    loaders.get_train_loader = loaders.get_val_loader = no_loader
    sys.modules["datasets.cifar"] = loaders
    adaptations.append("step: datasets.cifar replaced (its loaders are not used)")
    import Train_CoMatch
    import utils

    adaptations = list(adaptations)
    args.adaptations = adaptations

    return {
        precision: _step(args, Train_CoMatch, utils, precision)
        for precision in args.precision.split(",")
    }


def _step(args, Train_CoMatch, utils, precision):
    import logging

    import torch

    device = "cpu" if args.cpu else "cuda"
    tuned = precision == "bf16"
    if tuned and not args.cpu:
        torch.backends.cudnn.benchmark = True
    b, u, classes = args.batch_size, args.batch_size * args.mu, 10
    options = argparse.Namespace(
        n_classes=classes,
        wresnet_k=args.wresnet_k,
        wresnet_n=args.wresnet_n,
        checkpoint="",
        eval_ema=True,
        ema_m=0.999,
        lam_u=1.0,
        lam_c=1.0,
        temperature=0.2,
        contrast_th=0.8,
        thr=0.95,
        alpha=0.9,
        queue_batch=5,
        low_dim=64,
        dataset="CIFAR10",
        n_labeled=40,
        seed=1,
        exp_dir="gpu_evidence",
    )
    options.queue_size = int(options.queue_batch * (args.mu + 1) * b)
    torch.manual_seed(0)
    model, criteria_x, ema_model = Train_CoMatch.set_model(options)
    model, ema_model = model.to(device), ema_model.to(device)
    memory_format = torch.channels_last if tuned else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema_model = ema_model.to(memory_format=memory_format)
    # Weight decay on all but BatchNorm parameters, SGD Nesterov: as its main().
    decay = [p for n, p in model.named_parameters() if "bn" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bn" in n]
    optim = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0}],
        lr=0.03,
        weight_decay=5e-4,
        momentum=0.9,
        nesterov=True,
    )
    schedule = utils.WarmupCosineLrScheduler(optim, 10**6, warmup_iter=0)

    def images(n):
        x = torch.randn(n, 3, 32, 32, device=device)
        return x.contiguous(memory_format=memory_format)

    labeled = (images(b), torch.arange(b, device=device) % classes)
    unlabeled = ((images(u), images(u), images(u)), torch.arange(u, device=device) % classes)
    queue = (
        torch.zeros(options.queue_size, options.low_dim, device=device),
        torch.zeros(options.queue_size, classes, device=device),
        0,
    )
    prob_list: list = []
    logger = logging.getLogger("official_step")

    def run(iters, queue):
        context = (
            torch.autocast(device_type=device, dtype=torch.bfloat16)
            if tuned
            else torch.autocast(device_type=device, enabled=False)
        )
        with context:
            out = Train_CoMatch.train_one_epoch(
                1,  # epoch > 0: memory smoothing from the first iteration
                model=model,
                ema_model=ema_model,
                prob_list=prob_list,
                criteria_x=criteria_x,
                optim=optim,
                lr_schdlr=schedule,
                dltrain_x=[labeled] * iters,
                dltrain_u=[unlabeled] * iters,
                args=options,
                n_iters=iters,
                logger=logger,
                queue_feats=queue[0],
                queue_probs=queue[1],
                queue_ptr=queue[2],
            )
        if not args.cpu:
            torch.cuda.synchronize()
        return out[6:9]

    queue = run(args.warmup, queue)
    start = time.perf_counter()
    run(args.iters, queue)
    seconds = (time.perf_counter() - start) / args.iters
    figures = {
        "precision": "bf16 autocast + channels_last + cudnn.benchmark" if tuned else "float32",
        "iteration_s_mean": seconds,
        "iterations": args.iters,
        "batch_size": b,
        "mu": args.mu,
        "images_per_step": b * (1 + 3 * args.mu),
        "torch": torch.__version__,
        "adaptations": args.adaptations,
    }
    figures["images_per_s"] = figures["images_per_step"] / seconds
    if not args.cpu:
        figures["device"] = torch.cuda.get_device_name()
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("end_to_end", "step"))
    parser.add_argument("--code", required=True, help="The patched copy of the official code.")
    parser.add_argument("--out", required=True, help="JSON file for the figures.")
    parser.add_argument("--root", default="", help="end_to_end: the random CIFAR-10 folder.")
    parser.add_argument("--workdir", default=".", help="end_to_end: where its logs go.")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--mu", type=int, default=7)
    parser.add_argument("--wresnet_n", type=int, default=28, help="step: WRN depth.")
    parser.add_argument("--wresnet_k", type=int, default=2, help="step: WRN widening.")
    parser.add_argument(
        "--precision", default="f32,bf16", help="step: comma-separated f32 and/or bf16."
    )
    parser.add_argument("--cpu", action="store_true", help="CPU smoke: no CUDA.")
    args = parser.parse_args()
    figures = end_to_end(args) if args.mode == "end_to_end" else step(args)
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
