"""PyTorch state dicts -> Flax variables, with one mapping table per architecture.

A PyTorch `state_dict` (name -> array; pass tensors as NumPy arrays, e.g. `t.numpy()`) is
converted into the `{'params': ..., 'batch_stats': ...}` of one of our models by a mapping
table: one `LayerMapping` per PyTorch module, naming its Flax module path and its kind.

Layout rules per kind (PyTorch -> Flax):

==========  ===================================  =====================================
kind        PyTorch key                          Flax leaf
==========  ===================================  =====================================
conv        weight [O, I, kH, kW]                params/.../kernel [kH, kW, I, O]
            bias [O]                             params/.../bias [O]
linear      weight [out, in]                     params/.../kernel [in, out]
            bias [out]                           params/.../bias [out]
batch_norm  weight, bias [C]                     params/.../scale, params/.../bias
            running_mean, running_var [C]        batch_stats/.../mean, batch_stats/.../var
            num_batches_tracked                  (ignored: no Flax counterpart)
==========  ===================================  =====================================

The conversion is driven by a template (our model's `model.init` variables): a key is
expected only where the template has the Flax leaf (so a conv without bias expects no
`bias`). Leaves the state dict does not provide keep the template's values, as PyTorch's
`load_state_dict(strict=False)` keeps a fresh classifier. The report lists, one line each,
the missing, unexpected and mis-shaped keys; a missing or mis-shaped key under a required
prefix (the backbone by default) raises a one-line ValueError.

Architectures (`MAPPINGS`): 'wide_resnet' = the official CoMatch / FixMatch WideResnet
(github salesforce/CoMatch, WideResNet.py: `backbone.conv1`, `backbone.layer{1,2,3}.{i}.
{bn1,conv1,bn2,conv2,downsample}`, `backbone.bn_last`, `classifier`, `fc1`, `fc2`) onto
comatch_jax.models.WideResNet inside models.Network. Another layout (torchvision / timm
ResNet-18/50) is another function returning its table, registered in MAPPINGS.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np

KINDS = ("conv", "linear", "batch_norm")

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
    path it becomes (e.g. ('backbone', 'layer1_0', 'bn1')); `kind` is one of KINDS."""

    torch_name: str
    flax_path: tuple[str, ...]
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"LayerMapping kind must be one of {KINDS}, got {self.kind!r}")


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


# Architecture name -> function(**architecture options) -> mapping table.
MAPPINGS: dict[str, Callable[..., tuple[LayerMapping, ...]]] = {
    "wide_resnet": wide_resnet_mapping,
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


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    for name in path:
        if not isinstance(tree, Mapping) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
    for name in path[:-1]:
        tree = tree[name]
    tree[path[-1]] = value


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _copy_tree(value) for key, value in tree.items()}
    return np.array(tree)


def _leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(tree, Mapping):
        return [p for key, value in tree.items() for p in _leaf_paths(value, (*prefix, key))]
    return [prefix]


def convert_state_dict(
    state_dict: Mapping[str, Any],
    mapping: Sequence[LayerMapping],
    template: Mapping[str, Any],
    *,
    required_prefixes: Sequence[str] = ("backbone",),
    strip_prefix: str = "",
    log: Callable[[str], None] | None = logging.getLogger(__name__).warning,
) -> tuple[dict[str, Any], ConversionReport]:
    """Converts a PyTorch state dict into Flax variables shaped like `template`.

    Args:
      state_dict: PyTorch name -> array (NumPy or anything np.asarray accepts).
      mapping: the architecture's table (e.g. `wide_resnet_mapping(28, 2)`).
      template: our model's variables, {'params': ..., 'batch_stats': ...} (arrays or
        jax.ShapeDtypeStructs are fine: only shapes and dtypes are read when a key is
        provided); leaves the state dict does not provide are copied from it.
      required_prefixes: Flax top-level names (first path element) whose leaves must all
        be provided with the right shape.
      strip_prefix: removed from the start of every state-dict key first ('module.' for a
        DistributedDataParallel checkpoint).
      log: called with each report line (None: silent).

    Returns:
      (variables, report): NumPy variables with the template's structure and dtypes, and
      the ConversionReport.

    Raises:
      ValueError (one line) if a key under `required_prefixes` is missing or mis-shaped.
    """
    state = {}
    for key, value in state_dict.items():
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix) :]
        state[key] = np.asarray(value)
    variables = {
        collection: _copy_tree(tree)
        for collection, tree in template.items()
        if collection in ("params", "batch_stats")
    }
    report = ConversionReport()
    consumed, filled = set(), set()
    for layer in mapping:
        for torch_leaf, (collection, flax_leaf, layout) in _LAYOUTS[layer.kind].items():
            path = (collection, *layer.flax_path, flax_leaf)
            target = _get(template, path)
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
            _set(variables, path, value.astype(np.dtype(target.dtype)))
            filled.add(path)
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
    report.not_in_table = ["/".join(path) for path in _leaf_paths(variables) if path not in mapped]
    if log is not None:
        for line in report.lines():
            log(line)
    if report.fatal:
        raise ValueError(
            f"The state dict does not fit the model: {len(report.fatal)} required "
            f"({'/'.join(required_prefixes)}) keys missing or mis-shaped, first "
            f"{report.fatal[0]!r}; check the architecture, depth and width."
        )
    return variables, report


def convert(
    state_dict: Mapping[str, Any],
    architecture: str,
    template: Mapping[str, Any],
    **options: Any,
) -> tuple[dict[str, Any], ConversionReport]:
    """`convert_state_dict` with the table `MAPPINGS[architecture](**table options)`.

    Table options (e.g. depth=28, widen_factor=2 for 'wide_resnet') go to the table
    function; `required_prefixes`, `strip_prefix` and `log` to convert_state_dict.
    Raises ValueError for an unknown architecture.
    """
    if architecture not in MAPPINGS:
        raise ValueError(
            f"Unknown architecture {architecture!r}; known: {', '.join(sorted(MAPPINGS))}"
        )
    convert_keys = {"required_prefixes", "strip_prefix", "log"}
    table = MAPPINGS[architecture](**{k: v for k, v in options.items() if k not in convert_keys})
    return convert_state_dict(
        state_dict, table, template, **{k: v for k, v in options.items() if k in convert_keys}
    )
