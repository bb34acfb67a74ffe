"""Every GPU figure of issue 17 in one call: our speed, the official code's, accuracy at scale.

  python experiments/gpu_evidence.py --out=DIR [--smoke] [--fmnist_dir=DIR]
      [--official_dir=third_party/CoMatch] [--parts=speed,official,accuracy]

Without --smoke it first checks that JAX sees a GPU (else one line on stderr and exit 2). Each
part then runs in its own process under its own time budget (--budget_<part>, seconds): a part
that runs over is killed (with its children), recorded as "over budget" with whatever it had
finished (each part rewrites DIR/<part>.json after every measurement), and the next part
runs. Everything goes to DIR/evidence.json and DIR/evidence.md (a Markdown table, also printed).

Parts:
  speed     experiments/benchmark.py's measurements: full step (augmentation + forward +
            losses + update + queue + EMA) and bare step (no augmentation), float32 and
            bfloat16, at the CIFAR-10 CoMatch shape (configs/comatch.py:cifar10_40: WRN-28-2,
            B = 64, mu = 7, 1,408 images per step) and the paper's shape (:competition96:
            ResNet-50, 96 px, B = 64, mu = 4, K = 30,000, 800 classes); augmentation's share;
            peak device memory (jax memory_stats); FLOPs of the compiled step (XLA
            cost_analysis), achieved FLOP/s and its fraction of the device's dense bf16 peak
            (BF16_PEAK_TFLOPS; omitted for an unknown device); then main's loop
            (train.train_and_evaluate with its sampler) at unlabeled pools of 50,000 and
            512,000 (device path) and 512,000 (host path), bfloat16, and the projected time of
            each preset's schedule at the loop's speed (cifar10_40: 2^19 steps; competition96:
            400 epochs of 512,000 unlabeled images at B * mu = 256 per step = 800,000 steps).
  official  salesforce/CoMatch (experiments/official_comatch.py; the folder --official_dir,
            git-ignored, patched at run time in a temporary copy): Train_CoMatch.py end to end
            as shipped for --official_iters iterations on random CIFAR-10-format data, and its
            train step alone on GPU tensors, f32 and bf16 autocast + channels_last. Skipped,
            with the reason recorded, when the folder or torch (or, end to end only,
            torchvision / cv2) is missing.
  accuracy  CoMatch, FixMatch and supervised-only (configs/*.py with preset fmnist40_gpu,
            bfloat16) on the real Fashion-MNIST (the four IDX files in --fmnist_dir) with 40
            labels, then CoMatch in float32 at the same steps; each through
            train.train_and_evaluate in this part's process.

--smoke: every part with tiny shapes and steps on the CPU (small CNN, B = 2..8, pools of
hundreds, a few steps, WRN-10-1 for the official step, a 500-image test set): it checks the
plumbing, its figures say nothing about a GPU.

The device command (one call; wheels/ holds what the GPU machine lacks, see
experiments/gpu_evidence_run.sh, which downloads them here and prints this command):

  pip install --no-deps -e . && pip install --no-deps wheels/*.whl && \
  python experiments/gpu_evidence.py --out=$OUT/gpu --fmnist_dir=data/fashion-mnist

Needs no TensorFlow (the trainer falls back to log + metrics.jsonl writers without it, with a
warning) and no clu.metric_writers on its own code path.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PARTS = ("speed", "official", "accuracy")
DEFAULT_BUDGETS = {"speed": 200, "official": 90, "accuracy": 240}  # seconds; <= 9 min in all
# Measured here: this flag leaves the smoke's numbers unchanged and compiles faster;
# --xla_backend_optimization_level=0 made CoMatch's float32 step non-finite (do not add it).
SMOKE_XLA_FLAGS = "--xla_llvm_disable_expensive_passes=true"
SMOKE_BUDGET = 600  # seconds per part with --smoke: compiling on a loaded 2-core CPU

# Dense bf16 tensor-core peaks (TFLOP/s) by a substring of jax's device_kind; NVIDIA data
# sheets: H100 SXM 989, H200 the same chip and clocks, A100 312. Others: no fraction.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 80GB HBM3", 989.0),
    ("H100 SXM", 989.0),
    ("A100", 312.0),
)

CIFAR_SHAPE = ("cifar10_40", 32, 3, 10)  # preset, image side, channels, classes
PAPER_SHAPE = ("competition96", 96, 3, 800)


def bf16_peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of a device_kind (BF16_PEAK_TFLOPS), None when unknown."""
    for name, peak in BF16_PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def _log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _write(path, record):
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- speed


def smoke_config(config):
    """The smoke's tiny version of `config`, in place: a small CNN, a short queue, and the
    weak view in the strong slots (compiles in seconds on a CPU; the strong augmentations
    have their own tests). benchmark.py --smoke uses it too, so that its smoke test and this
    script's build the same programs."""
    config.model.name, config.model.widths = "small_cnn", (8, 16)
    config.comatch.queue_size = 32
    config.augment.strong0 = config.augment.strong1 = "weak"


def _smoke_sizes(config, *, batch_size, mu):
    """smoke_config with B and mu as given."""
    smoke_config(config)
    config.batch_size, config.mu = batch_size, mu


def run_speed(args, record, save):
    sys.path.insert(0, HERE)
    import benchmark  # experiments/benchmark.py: the measurements, reused

    smoke = args.smoke
    record["measurements"], record["loops"] = [], []
    shapes = [CIFAR_SHAPE, PAPER_SHAPE]
    if smoke:
        shapes = [("cifar10_40", 16, 3, 10), ("competition96", 24, 3, 800)]

    def config_for(preset, dtype):
        config = benchmark.benchmark_config(preset, dtype=dtype)
        if smoke:
            _smoke_sizes(config, batch_size=2, mu=1)
        return config

    repeats = 1 if smoke else 10
    cases = [(shape, dtype) for shape in shapes for dtype in ("bfloat16", "float32")]
    if smoke:  # one measurement and one loop, at one shape: compiling dominates on a CPU
        cases = [(shapes[1], "bfloat16")]
    for (preset, size, channels, classes), dtype in cases:
        config = config_for(preset, dtype)
        _log(f"speed: {preset} {dtype} steps")
        figures = benchmark.measure(
            config, size, channels, classes, repeats=repeats, loop_steps=0, preset=preset
        )
        peak = bf16_peak_tflops(figures["device"])
        if peak:
            figures["bf16_peak_tflops"] = peak
            figures["fraction_of_bf16_peak"] = figures["achieved_gflop_per_s"] / (peak * 1e3)
        record["measurements"].append(figures)
        save()
    # main's loop with its sampler: bfloat16, pools 50k / 512k on the device, 512k on the host.
    pools = [(50_000, False), (512_000, False), (512_000, True)]
    loops = [(shape, pool, host) for shape in shapes for pool, host in pools]
    if smoke:  # the host path (the device path is every trainer test's)
        loops = [(shapes[1], 200, True)]
    loop_steps = 4 if smoke else 100
    for (preset, size, channels, classes), pool, host in loops:
        config = config_for(preset, "bfloat16")
        _log(f"speed: {preset} loop, pool {pool}, host path {host}")
        start = time.perf_counter()
        loop = benchmark.time_loop(config, size, channels, classes, pool, loop_steps, host)
        images_per_step = config.batch_size * (1 + 3 * config.mu)
        loop.update(
            preset=preset,
            dtype="bfloat16",
            pool_size=pool,
            host_path=host,
            loop_steps=loop_steps,
            images_per_step=images_per_step,
            loop_images_per_s=images_per_step / loop["loop_s"],
            schedule_steps=config.num_steps,
            projected_schedule_hours=config.num_steps * loop["loop_s"] / 3600,
            wall_s=time.perf_counter() - start,
        )
        full = [
            m
            for m in record["measurements"]
            if m["preset"] == preset and m["dtype"] == config.model.dtype
        ]
        if full:
            loop["loop_over_full_step"] = full[0]["full_step_s"] / loop["loop_s"]
        record["loops"].append(loop)
        save()


# ----------------------------------------------------------------------------- official


def _installed(name):
    """Whether `name` imports (a torchvision built for another torch does not)."""
    try:
        __import__(name)
    except Exception:
        return False
    return True


def _official_missing(args):
    if not os.path.isfile(os.path.join(args.official_dir, "Train_CoMatch.py")):
        return (
            f"{args.official_dir} has no Train_CoMatch.py (fetch github salesforce/CoMatch "
            "into this git-ignored folder)"
        )
    if not _installed("torch"):
        return "torch is not installed"
    return None


def run_official(args, record, save):
    sys.path.insert(0, HERE)
    import official_comatch

    smoke = args.smoke
    with tempfile.TemporaryDirectory() as tmp:
        code = os.path.join(tmp, "CoMatch")
        record["patches"] = official_comatch.patched_copy(args.official_dir, code)
        common = ["--code", code] + (["--cpu"] if smoke else [])
        b, mu = (2, 1) if smoke else (64, 7)
        # Its train step alone on ready-made tensors: f32, and bf16 + channels_last.
        out = os.path.join(tmp, "step.json")
        step = [sys.executable, os.path.join(HERE, "official_comatch.py"), "step", *common]
        step += ["--out", out, f"--batch_size={b}", f"--mu={mu}"]
        step += (
            ["--iters=1", "--warmup=1", "--wresnet_n=10", "--wresnet_k=1"]
            if smoke
            else [
                "--iters=50",
                "--warmup=10",
            ]
        )
        _run_child(step, tmp, record, "step")
        if os.path.exists(out):
            with open(out) as f:
                record["step"] = json.load(f)
        save()
        # End to end as shipped (its loaders, augmentations, evaluation, checkpoint).
        missing = [m for m in ("torchvision", "cv2") if not _installed(m)]
        if missing:
            record["end_to_end"] = {"skipped": f"{' and '.join(missing)} cannot be imported"}
            save()
            return
        root = os.path.join(tmp, "data")
        official_comatch.write_random_cifar10(
            root,
            train_per_batch=20 if smoke else 10_000,
            test_images=20 if smoke else 1_000,
        )
        out = os.path.join(tmp, "end_to_end.json")
        e2e = [sys.executable, os.path.join(HERE, "official_comatch.py"), "end_to_end", *common]
        e2e += ["--out", out, f"--root={root}", f"--workdir={tmp}"]
        e2e += [f"--batch_size={b}", f"--mu={mu}"]
        e2e += ["--iters=3", "--warmup=1"] if smoke else [f"--iters={args.official_iters}"]
        _run_child(e2e, tmp, record, "end_to_end")
        if os.path.exists(out):
            with open(out) as f:
                record["end_to_end"] = json.load(f)
        save()


def _run_child(command, cwd, record, name):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        record[name] = {"failed": f"exit {result.returncode}: {result.stderr[-1500:]}"}


# ----------------------------------------------------------------------------- accuracy


def _fmnist(args):
    from comatch_jax import data as datasets

    data = datasets.load_idx_dataset(args.fmnist_dir, "fashion_mnist")
    if args.smoke:  # a 500-image test set: evaluation in a second on the CPU
        data = dataclasses.replace(
            data, test_images=data.test_images[:500], test_labels=data.test_labels[:500]
        )
    return data


class _RecordingWriter:
    """Keeps every scalar the trainer writes (the training curves), writes nowhere else."""

    def __init__(self):
        self.rows = []

    def write_scalars(self, step, scalars):
        self.rows.append({"step": int(step), **{k: float(v) for k, v in scalars.items()}})

    def flush(self):
        pass

    def close(self):
        pass


def _load_config(name, preset):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def accuracy_runs(smoke):
    """(label, config file, dtype) of the accuracy part, in order. The smoke runs two of
    them (both dtypes, with and without unlabeled data): the others are the same code with
    another config, and each run costs a compile on the CPU."""
    if smoke:
        return [("comatch", "comatch", "bfloat16"), ("supervised", "supervised", "float32")]
    return [
        ("comatch", "comatch", "bfloat16"),
        ("fixmatch", "fixmatch", "bfloat16"),
        ("supervised", "supervised", "bfloat16"),
        ("comatch", "comatch", "float32"),
    ]


def run_accuracy(args, record, save):
    from comatch_jax.trainer import train

    data = _fmnist(args)
    record["runs"] = []
    for label, config_file, dtype in accuracy_runs(args.smoke):
        config = _load_config(config_file, "fmnist40_gpu")
        config.model.dtype = dtype
        config.dataset.source, config.dataset.idx_dir = "idx", args.fmnist_dir
        if args.smoke:
            _smoke_sizes(config, batch_size=8, mu=0 if config_file == "supervised" else 1)
            config.num_steps, config.log_every = 4, 2
            config.eval_every = config.checkpoint_every = 4
        writer = _RecordingWriter()
        _log(f"accuracy: {label} {dtype}")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            _, summary = train.train_and_evaluate(config, workdir, writer=writer, dataset=data)
        train_rows = [r for r in writer.rows if "train/images_per_sec" in r]
        record["runs"].append(
            {
                "method": label,
                "dtype": dtype,
                "model": config.model.name,
                "steps": config.num_steps,
                "batch_size": config.batch_size,
                "mu": config.mu,
                "num_labels": config.num_labels,
                "seed": config.seed,
                "wall_s": time.perf_counter() - start,
                "summary": summary,
                "steps_per_s_last": train_rows[-1]["train/steps_per_sec"] if train_rows else None,
                "curves": writer.rows,
            }
        )
        save()


# ----------------------------------------------------------------------------- orchestration


def environment():
    """Versions and presence of what the parts use (on the machine that runs them)."""
    found = {}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax.checkpoint",
        "ml_collections",
        "clu",
        "dm_pix",
        "tensorflow",
        "torch",
        "torchvision",
        "cv2",
    ):
        try:
            spec = importlib.util.find_spec(name.split(".")[0])
        except ImportError:  # e.g. an import hook that hides the package
            spec = None
        if spec is None:
            found[name] = None
            continue
        if name == "tensorflow":
            found[name] = "present (not imported)"
            continue
        try:
            module = __import__(name, fromlist=["__version__"])
            found[name] = str(getattr(module, "__version__", "present"))
        except Exception as error:  # recorded, e.g. a torchvision built for another torch
            found[name] = f"import fails: {type(error).__name__}: {error}"[:200]
    return found


def _part_main(args):
    path = os.path.join(args.out, f"{args.part}.json")
    record = {"part": args.part, "started": time.time()}

    def save():
        record["saved"] = time.time()
        _write(path, record)

    save()
    {"speed": run_speed, "official": run_official, "accuracy": run_accuracy}[args.part](
        args, record, save
    )
    record["finished"] = True
    save()


def _run_part(args, part, budget):
    """Runs one part in a child process (own session, so a timeout kills its workers)."""
    command = [sys.executable, os.path.abspath(__file__), f"--part={part}", f"--out={args.out}"]
    command += [f"--fmnist_dir={args.fmnist_dir}", f"--official_dir={args.official_dir}"]
    command += [f"--official_iters={args.official_iters}"] + (["--smoke"] if args.smoke else [])
    env = dict(os.environ)
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)  # the parent's setting, not the part's
    log_path = os.path.join(args.out, f"{part}.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            rc = child.wait(timeout=budget)
            status = "ok" if rc == 0 else f"failed (exit {rc}; see {part}.log)"
        except subprocess.TimeoutExpired:
            status = f"over budget ({budget} s); partial results"
        finally:  # also when this process is interrupted: the part and its workers go too
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    seconds = time.perf_counter() - start
    path = os.path.join(args.out, f"{part}.json")
    result = {}
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    if status.startswith("failed"):
        with open(log_path) as f:
            result["log_tail"] = f.read()[-3000:]
    result.update(status=status, wall_s=seconds, budget_s=budget)
    return result


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(evidence) -> str:
    """The Markdown table of the evidence dict (the figures, one per row)."""
    rows = []

    def add(part, what, value, unit=""):
        rows.append(f"| {part} | {what} | {_fmt(value)} | {unit} |")

    parts = evidence["parts"]
    for name, result in parts.items():
        add(name, "status", result.get("status"), f"{_fmt(result.get('wall_s'))} s")
    speed = parts.get("speed", {})
    for m in speed.get("measurements", []):
        tag = f"{m['preset']} {m['model']} {m['dtype']}"
        add("speed", f"{tag}: full step", m["full_step_s"] * 1e3, "ms")
        add("speed", f"{tag}: full step", m["full_step_images_per_s"], "images/s")
        add("speed", f"{tag}: bare step", m["bare_step_s"] * 1e3, "ms")
        add("speed", f"{tag}: augmentation share", m["augment_fraction_of_full_step"])
        add("speed", f"{tag}: peak device memory", m["peak_device_memory_gib"], "GiB")
        add("speed", f"{tag}: achieved", m["achieved_gflop_per_s"] / 1e3, "TFLOP/s")
        if "fraction_of_bf16_peak" in m:
            add("speed", f"{tag}: fraction of bf16 peak", m["fraction_of_bf16_peak"])
    for loop in speed.get("loops", []):
        path = "host" if loop["host_path"] else "device"
        tag = f"{loop['preset']} loop, pool {loop['pool_size']:,} ({path})"
        add("speed", f"{tag}", loop["loop_s"] * 1e3, "ms/step")
        add("speed", f"{tag}: loop / full step speed", loop.get("loop_over_full_step"))
        add(
            "speed",
            f"{tag}: projected {loop['schedule_steps']:,} steps",
            loop["projected_schedule_hours"],
            "hours",
        )
    official = parts.get("official", {})
    for precision, step in (official.get("step") or {}).items():
        if isinstance(step, dict) and "iteration_s_mean" in step:
            add(
                "official", f"step alone, {step['precision']}", step["iteration_s_mean"] * 1e3, "ms"
            )
    if "failed" in (official.get("step") or {}):
        add("official", "step alone", "failed", "see evidence.json")
    e2e = official.get("end_to_end") or {}
    if "iteration_s_mean" in e2e:
        add("official", "end to end as shipped", e2e["iteration_s_mean"] * 1e3, "ms/step")
        add("official", "end to end as shipped", e2e["images_per_s"], "images/s")
    elif e2e:
        add("official", "end to end", "; ".join(f"{k}: {v}" for k, v in e2e.items())[:200])
    for key, value in evidence.get("ratios", {}).items():
        add("ratio", key, value, "x")
    for run in parts.get("accuracy", {}).get("runs", []):
        s = run["summary"]
        tag = f"{run['method']} {run['dtype']} ({run['model']}, {run['steps']} steps)"
        add("accuracy", f"{tag}: test accuracy (EMA)", s.get("test_accuracy"))
        add("accuracy", f"{tag}: wall time", run["wall_s"], "s")
    header = "| part | figure | value | unit / note |\n|---|---|---|---|\n"
    return header + "\n".join(rows) + "\n"


def ratios(parts) -> dict:
    """Our bf16 full step (CIFAR shape) over the official code's images/s."""
    ours = [
        m
        for m in parts.get("speed", {}).get("measurements", [])
        if m["preset"] == "cifar10_40" and m["dtype"] == "bfloat16"
    ]
    official = parts.get("official", {})
    out = {}
    if not ours:
        return out
    ours_ips = ours[0]["full_step_images_per_s"]
    e2e = official.get("end_to_end") or {}
    if "images_per_s" in e2e:
        out["our bf16 full step / official end to end (images/s)"] = ours_ips / e2e["images_per_s"]
    step = (official.get("step") or {}).get("bf16") or {}
    if "images_per_s" in step:
        out["our bf16 full step / official tuned bf16 step (images/s)"] = (
            ours_ips / step["images_per_s"]
        )
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder for evidence.json / evidence.md.")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes on the CPU.")
    parser.add_argument("--parts", default=",".join(PARTS), help="Comma-separated parts.")
    parser.add_argument("--fmnist_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--official_dir", default=os.path.join(REPO, "third_party", "CoMatch"))
    parser.add_argument("--official_iters", type=int, default=100)
    for part, seconds in DEFAULT_BUDGETS.items():
        parser.add_argument(
            f"--budget_{part}",
            type=float,
            default=None,
            help=f"Seconds (default {seconds}; {SMOKE_BUDGET} with --smoke).",
        )
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)  # a child's part
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    args.official_dir = os.path.abspath(args.official_dir)
    os.makedirs(args.out, exist_ok=True)
    if args.part:
        return _part_main(args)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"gpu_evidence: unknown part(s) {unknown}; choose from {PARTS}")
    # SIGTERM (e.g. a timeout around this call) unwinds like Ctrl-C, so _run_part's finally
    # ends the running part's process group.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"gpu_evidence: signal {signum}"))
    # The parent only looks at the devices: no preallocation of the GPU the parts use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
        # Tiny programs: compile time dominates, so XLA:CPU compiles without its expensive
        # LLVM passes (the parts inherit this environment).
        flags = os.environ.get("XLA_FLAGS", "").split()
        if SMOKE_XLA_FLAGS not in flags:  # a repeated flag would change JAX's cache keys
            os.environ["XLA_FLAGS"] = " ".join(flags + [SMOKE_XLA_FLAGS])
    import jax

    devices = jax.devices()
    if not args.smoke and devices[0].platform != "gpu":
        print(
            f"gpu_evidence: JAX sees no GPU (devices: {devices}); run with --smoke on a CPU.",
            file=sys.stderr,
        )
        return 2
    evidence = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "smoke": args.smoke,
        "device": str(devices[0].device_kind),
        "platform": devices[0].platform,
        "device_count": len(devices),
        "environment": environment(),
        "parts": {},
    }
    for part in parts:
        reason = _official_missing(args) if part == "official" else None
        if part == "accuracy" and not os.path.isdir(args.fmnist_dir):
            reason = f"--fmnist_dir {args.fmnist_dir} does not exist (carry the 4 IDX files)"
        if reason:
            evidence["parts"][part] = {"status": f"skipped: {reason}"}
        else:
            budget = getattr(args, f"budget_{part}")
            if budget is None:
                budget = SMOKE_BUDGET if args.smoke else DEFAULT_BUDGETS[part]
            evidence["parts"][part] = _run_part(args, part, budget)
        evidence["ratios"] = ratios(evidence["parts"])
        _write(os.path.join(args.out, "evidence.json"), evidence)
    markdown = table(evidence)
    title = "CPU smoke (not GPU figures)" if args.smoke else f"GPU evidence on {evidence['device']}"
    text = f"## {title}, {evidence['date_utc']} UTC\n\n{markdown}"
    with open(os.path.join(args.out, "evidence.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
