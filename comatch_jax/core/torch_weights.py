"""PyTorch state dicts -> Flax variables, with one mapping table per architecture.

A PyTorch `state_dict` (name -> array; pass tensors as NumPy arrays, e.g. `t.numpy()`) is
converted into the `{'params': ..., 'batch_stats': ...}` of one of our models by a mapping
table (`MAPPINGS`: the official CoMatch WideResnet, torchvision's and timm's ResNets): one
`LayerMapping` per PyTorch module, naming its Flax module path and its kind, whose layout
rule is in _LAYOUTS (a conv weight [O, I, kH, kW] becomes a kernel [kH, kW, I, O], a linear
weight [out, in] a kernel [in, out]; BatchNorm's weight and bias become scale and bias, its
running statistics batch_stats mean and var; num_batches_tracked has no counterpart).

The conversion is driven by a template (our model's `model.init` variables): a key is
expected only where the template has the Flax leaf (so a conv without bias expects no
`bias`). Leaves the state dict does not provide keep the template's values, as PyTorch's
`load_state_dict(strict=False)` keeps a fresh classifier. The report lists, one line each,
the missing, unexpected and mis-shaped keys; a missing or mis-shaped key under a required
prefix (the backbone by default) raises a one-line ValueError. `load_state_dict` reads the
files (.safetensors without torch).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from flax import traverse_util

from comatch_jax.core.models import RESNET_STAGES

# kind -> PyTorch parameter/buffer name -> (Flax collection, Flax leaf name, layout function)
_LAYOUTS: dict[str, dict[str, tuple[str, str, Callable[[np.ndarray], np.ndarray]]]] = {
    "conv": {
        "weight": ("params", "kernel", lambda w: np.transpose(w, (2, 3, 1, 0))),
        "bias": ("params", "bias", lambda b: b),
    },
    "linear": {
        "weight": ("params", "kernel", lambda w: np.transpose(w, (1, 0))),
        "bias": ("params", "bias", lambda b: b),
    },
    "batch_norm": {
        "weight": ("params", "scale", lambda w: w),
        "bias": ("params", "bias", lambda b: b),
        "running_mean": ("batch_stats", "mean", lambda m: m),
        "running_var": ("batch_stats", "var", lambda v: v),
    },
}
_IGNORED = {"batch_norm": ("num_batches_tracked",)}


@dataclasses.dataclass(frozen=True)
class LayerMapping:
    """One PyTorch module (`torch_name`, e.g. 'backbone.layer1.0.bn1') and the Flax module
    path it becomes (e.g. ('backbone', 'layer1_0', 'bn1')); `kind` is a key of _LAYOUTS."""

    torch_name: str
    flax_path: tuple[str, ...]
    kind: str


def wide_resnet_mapping(depth: int = 28, widen_factor: int = 2) -> tuple[LayerMapping, ...]:
    """The official CoMatch WideResnet(n_classes, k=widen_factor, n=depth, proj=True) table.

    Source: github salesforce/CoMatch, WideResNet.py (WideResnetBackbone, BasicBlockPreAct,
    WideResnet). A block has `downsample` (1x1 conv) where its width or stride changes: the
    first block of every stage, except the first stage when widen_factor is 1.
    Raises ValueError for a depth that is not 6n + 4.
    """
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"WideResNet depth must be 6n+4 (>= 10), got {depth}")
    blocks = (depth - 4) // 6
    table = [LayerMapping("backbone.conv1", ("backbone", "conv1"), "conv")]
    in_width = 16
    for stage, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
        width *= widen_factor
        for block in range(blocks):
            torch_block = f"backbone.layer{stage}.{block}"
            flax_block = ("backbone", f"layer{stage}_{block}")
            names = ["bn1", "conv1", "bn2", "conv2"]
            if block == 0 and (in_width != width or stride != 1):
                names.append("downsample")
            for name in names:
                kind = "batch_norm" if name.startswith("bn") else "conv"
                table.append(LayerMapping(f"{torch_block}.{name}", (*flax_block, name), kind))
            in_width = width
    table.append(LayerMapping("backbone.bn_last", ("backbone", "bn_last"), "batch_norm"))
    table += [
        LayerMapping("classifier", ("classifier",), "linear"),
        LayerMapping("fc1", ("head_hidden",), "linear"),
        LayerMapping("fc2", ("head_out",), "linear"),
    ]
    return tuple(table)


def _resnet_layers(
    depth: int, stem: str = "imagenet", num_classes: int = 1000
) -> Iterator[tuple[LayerMapping, tuple[int, ...]]]:
    """(LayerMapping, PyTorch weight shape) for every module of torchvision's ResNet-depth,
    in torchvision's order. Flax paths are comatch_jax.core.models.ResNet's automatic names."""
    if depth not in RESNET_STAGES:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth}")
    stages, bottleneck = RESNET_STAGES[depth]
    kernel = 7 if stem == "imagenet" else 3
    yield LayerMapping("conv1", ("backbone", "Conv_0"), "conv"), (64, 3, kernel, kernel)
    yield LayerMapping("bn1", ("backbone", "BatchNorm_0"), "batch_norm"), (64,)
    in_width, index = 64, 0
    for stage, num_blocks in enumerate(stages):
        width = 64 * 2**stage
        out_width = width * 4 if bottleneck else width
        for block in range(num_blocks):
            torch_block = f"layer{stage + 1}.{block}"
            flax_block = ("backbone", f"ResNetBlock_{index}")
            if bottleneck:
                convs = [(width, in_width, 1), (width, width, 3), (out_width, width, 1)]
            else:
                convs = [(width, in_width, 3), (width, width, 3)]
            for i, (out_c, in_c, k) in enumerate(convs):
                yield LayerMapping(
                    f"{torch_block}.conv{i + 1}", (*flax_block, f"Conv_{i}"), "conv"
                ), (out_c, in_c, k, k)
                yield LayerMapping(
                    f"{torch_block}.bn{i + 1}", (*flax_block, f"BatchNorm_{i}"), "batch_norm"
                ), (out_c,)
            if block == 0 and (in_width != out_width or stage > 0):
                n = len(convs)
                yield LayerMapping(
                    f"{torch_block}.downsample.0", (*flax_block, f"Conv_{n}"), "conv"
                ), (out_width, in_width, 1, 1)
                yield LayerMapping(
                    f"{torch_block}.downsample.1", (*flax_block, f"BatchNorm_{n}"), "batch_norm"
                ), (out_width,)
            in_width, index = out_width, index + 1
    yield LayerMapping("fc", ("classifier",), "linear"), (num_classes, in_width)


def resnet_mapping(depth: int = 50, stem: str = "imagenet") -> tuple[LayerMapping, ...]:
    """torchvision's (and timm's) ResNet-depth table onto comatch_jax.core.models.ResNet.

    Source: torchvision/models/resnet.py (BasicBlock, Bottleneck with the stride in conv2 =
    v1.5, downsample = Sequential(conv1x1, BatchNorm2d), fc); timm/models/resnet.py uses the
    same names for resnet18/34/50. `fc` becomes our `classifier` (loaded only where the class
    count matches). stem='cifar' expects a 3x3 conv1 (no ImageNet checkpoint has one).
    Raises ValueError for another depth.
    """
    return tuple(layer for layer, _ in _resnet_layers(depth, stem))


def random_resnet_state_dict(
    depth: int, num_classes: int = 1000, seed: int = 0, stem: str = "imagenet"
) -> dict[str, np.ndarray]:
    """A torchvision-named ResNet-depth state dict of seeded random float32 arrays (and int64
    `num_batches_tracked`), for tests and cost measurements without downloaded weights.

    Convs ~ N(0, 1 / fan_in), BatchNorm weight ~ U(0.5, 1), bias ~ N(0, 0.1), running mean
    ~ N(0, 0.1), running var ~ U(0.5, 1.5), fc ~ U(+-1/sqrt(fan_in)): random but with
    activations of order one through the whole network in eval mode.
    """
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for layer, shape in _resnet_layers(depth, stem, num_classes):
        name = layer.torch_name
        if layer.kind == "conv":
            fan_in = int(np.prod(shape[1:]))
            state[f"{name}.weight"] = rng.normal(0.0, fan_in**-0.5, shape).astype(np.float32)
        elif layer.kind == "batch_norm":
            state[f"{name}.weight"] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
            state[f"{name}.bias"] = rng.normal(0.0, 0.1, shape).astype(np.float32)
            state[f"{name}.running_mean"] = rng.normal(0.0, 0.1, shape).astype(np.float32)
            state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            state[f"{name}.num_batches_tracked"] = np.asarray(0, np.int64)
        else:
            bound = shape[1] ** -0.5
            state[f"{name}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
            state[f"{name}.bias"] = rng.uniform(-bound, bound, shape[:1]).astype(np.float32)
    return state


# Architecture name -> function(**architecture options) -> mapping table.
MAPPINGS: dict[str, Callable[..., tuple[LayerMapping, ...]]] = {
    "wide_resnet": wide_resnet_mapping,
    "resnet": resnet_mapping,
}


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did. Each list holds PyTorch keys (mis_shaped: a description)."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mis_shaped: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    # Flax leaves that no table entry fills (kept from the template).
    not_in_table: list[str] = dataclasses.field(default_factory=list)
    # Missing or mis-shaped keys under the required prefixes: the conversion failed.
    fatal: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per problem: 'missing: KEY', 'unexpected: KEY', 'mis-shaped: ...',
        'not in table: FLAX/PATH'."""
        return (
            [f"missing: {key}" for key in self.missing]
            + [f"unexpected: {key}" for key in self.unexpected]
            + [f"mis-shaped: {text}" for text in self.mis_shaped]
            + [f"not in table: {path}" for path in self.not_in_table]
        )


def convert(
    state_dict: Mapping[str, Any],
    architecture: str,
    template: Mapping[str, Any],
    *,
    required_prefixes: Sequence[str] = ("backbone",),
    strip_prefix: str = "",
    log: Callable[[str], None] | None = logging.getLogger(__name__).warning,
    **table_options: Any,
) -> tuple[dict[str, Any], ConversionReport]:
    """Converts `state_dict` (PyTorch name -> array) into Flax variables shaped like
    `template` (our model's {'params', 'batch_stats'} arrays; a leaf the state dict does not
    provide keeps the template's value), with the table MAPPINGS[architecture](**table_options),
    e.g. depth=28, widen_factor=2 for 'wide_resnet'. Every leaf under `required_prefixes`
    (top-level Flax names) must be provided, with the right shape. `strip_prefix` is removed
    from every key first ('module.' for a DistributedDataParallel checkpoint); `log` gets each
    report line (None: silent).

    Returns (NumPy variables with the template's structure and dtypes, the report). Raises
    ValueError (one line) for an unknown architecture, or a required key that is missing or
    mis-shaped.
    """
    if architecture not in MAPPINGS:
        raise ValueError(
            f"Unknown architecture {architecture!r}; known: {', '.join(sorted(MAPPINGS))}"
        )
    mapping = MAPPINGS[architecture](**table_options)
    state = {}
    for key, value in state_dict.items():
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix) :]
        state[key] = np.asarray(value)
    flat_template = traverse_util.flatten_dict(
        {k: v for k, v in template.items() if k in ("params", "batch_stats")}
    )
    variables = {path: np.array(leaf) for path, leaf in flat_template.items()}
    report = ConversionReport()
    consumed = set()
    for layer in mapping:
        for torch_leaf, (collection, flax_leaf, layout) in _LAYOUTS[layer.kind].items():
            path = (collection, *layer.flax_path, flax_leaf)
            target = flat_template.get(path)
            key = f"{layer.torch_name}.{torch_leaf}"
            if target is None:
                continue  # e.g. a conv without bias: the key is unexpected if present
            required = layer.flax_path[0] in required_prefixes
            if key not in state:
                report.missing.append(key)
                if required:
                    report.fatal.append(key)
                continue
            consumed.add(key)
            value = layout(state[key])
            if tuple(value.shape) != tuple(target.shape):
                report.mis_shaped.append(
                    f"{key} {tuple(state[key].shape)} -> {'/'.join(path)} expects "
                    f"{tuple(target.shape)}"
                )
                if required:
                    report.fatal.append(key)
                continue
            variables[path] = value.astype(np.dtype(target.dtype))
            report.loaded.append(key)
        for ignored in _IGNORED.get(layer.kind, ()):
            key = f"{layer.torch_name}.{ignored}"
            if key in state:
                consumed.add(key)
                report.ignored.append(key)
    report.unexpected = sorted(set(state) - consumed)
    mapped = {
        (collection, *layer.flax_path, leaf)
        for layer in mapping
        for collection, leaf, _ in _LAYOUTS[layer.kind].values()
    }
    report.not_in_table = ["/".join(path) for path in variables if path not in mapped]
    if log is not None:
        for line in report.lines():
            log(line)
    if report.fatal and not report.loaded:
        raise ValueError(
            f"The state dict is of another architecture: none of the {len(report.fatal)} "
            f"required keys (first {report.fatal[0]!r}) is in it (its first key: "
            f"{next(iter(state), None)!r}); check model.name / depth, or strip_prefix."
        )
    if report.fatal:
        raise ValueError(
            f"The state dict does not fit the model: {len(report.fatal)} required "
            f"({'/'.join(required_prefixes)}) keys missing or mis-shaped, first "
            f"{report.fatal[0]!r}; check the architecture, depth and width."
        )
    return traverse_util.unflatten_dict(variables), report


# Named sources: 'torchvision:NAME' / 'timm:NAME', loaded through the package's own cache.
NAMED_SOURCES = ("torchvision", "timm")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _to_numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Tensors (torch or NumPy) -> NumPy arrays; nested 'state_dict' / 'model' unwrapped."""
    for wrapper in ("state_dict", "model", "module"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    out = {}
    for key, value in state.items():
        if hasattr(value, "detach"):  # a torch.Tensor
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    return out


def _load_named(source: str) -> dict[str, np.ndarray]:
    package, _, name = source.partition(":")
    if package not in NAMED_SOURCES or not name:
        raise ValueError(
            f"init_from_torch={source!r}: a named source is 'torchvision:NAME' or 'timm:NAME' "
            "(e.g. torchvision:resnet50, timm:resnet50.a1_in1k)"
        )
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ValueError(
            f"init_from_torch={source!r} needs the {package} package, which is not installed "
            f"(pip install {package}); or pass a local .safetensors / .pth file"
        ) from None
    try:
        if package == "torchvision":
            model = module.models.get_model(name, weights="DEFAULT")
        else:
            model = module.create_model(name, pretrained=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"init_from_torch={source!r}: could not download the weights (offline? {first}); "
            "put the file in the package's cache or pass a local .safetensors / .pth file"
        ) from None
    return _to_numpy(model.state_dict())


def load_state_dict(source: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict as NumPy arrays (name -> array).

    `source`: a `.safetensors` file (read with safetensors.numpy, no torch needed), a
    `.pth` / `.pt` / `.bin` / `.ckpt` file (torch.load(weights_only=True); a checkpoint
    dict's 'state_dict' / 'model' entry is unwrapped), or a named source 'torchvision:NAME'
    / 'timm:NAME' (the official package's pretrained weights through its own download
    cache; needs the package and, the first time, the network).

    Raises FileNotFoundError (no such file) or ValueError (unreadable or truncated file,
    torch or the named package absent, download failed, unknown suffix), each one line.
    """
    if ":" in source and source.split(":", 1)[0] in NAMED_SOURCES + ("hf", "hub"):
        return _load_named(source)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"init_from_torch: no such file {source!r}")
    if source.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(source))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{source} is not a readable .safetensors file ({str(error).splitlines()[0]}); "
                "it may be truncated: download it again"
            ) from None
    if source.endswith(_TORCH_SUFFIXES):
        try:
            import torch
        except ImportError:
            raise ValueError(
                "reading .pth needs PyTorch: pip install torch, or convert the file to "
                ".safetensors"
            ) from None
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"{source} is not a readable PyTorch file ({first[:160]}); it may be "
                "truncated: download it again"
            ) from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{source} holds a {type(state).__name__}, not a state dict")
        return _to_numpy(state)
    raise ValueError(
        f"init_from_torch={source!r}: expected a .safetensors or .pth file, or "
        "torchvision:NAME / timm:NAME"
    )


def architecture_of(model_config: Any) -> tuple[str, dict[str, Any]]:
    """(MAPPINGS name, table options) for a `config.model`: resnet -> ('resnet',
    {depth, stem}), wide_resnet -> ('wide_resnet', {depth, widen_factor}). Raises
    ValueError for a model without a PyTorch layout (small_cnn)."""
    options = {"resnet": ("depth", "stem"), "wide_resnet": ("depth", "widen_factor")}
    if model_config.name in options:
        return model_config.name, {name: model_config[name] for name in options[model_config.name]}
    raise ValueError(
        f"model.init_from_torch needs model.name resnet or wide_resnet (a PyTorch layout), "
        f"got {model_config.name!r}"
    )
