"""Starting a run from pretrained PyTorch weights (`--config.model.init_from_torch=SOURCE`).

The trainer calls `with_pretrained_normalization(config)` before it prepares the data
(ImageNet mean/std unless the user set dataset.mean/std) and `initialise_from_torch(state,
config)` on a fresh TrainState (not on a resumed one: the checkpoint has the weights then).
The conversion itself is comatch_jax.core.torch_weights. Imports neither TensorFlow nor torch.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from comatch_jax import config_lib
from comatch_jax.core import torch_weights
from comatch_jax.core.train_state import TrainState


def with_pretrained_normalization(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with dataset.mean/std = ImageNet's (config_lib.IMAGENET_MEAN / _STD, what
    torchvision's and timm's ImageNet weights were trained with) when model.init_from_torch
    is set and the user left both empty (a copy; `config` itself is unchanged). Otherwise
    `config` as it is: a user's own values always win."""
    if not config.model.get("init_from_torch") or (config.dataset.mean and config.dataset.std):
        return config
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.dataset.mean = config_lib.IMAGENET_MEAN
    resolved.dataset.std = config_lib.IMAGENET_STD
    return resolved


def _strip_prefix(state_dict: dict[str, np.ndarray]) -> str:
    """'module.' when every key has it (a DistributedDataParallel checkpoint), else ''."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return "module."
    return ""


def initialise_from_torch(
    state: TrainState,
    config: ml_collections.ConfigDict,
    *,
    sharding: jax.sharding.Sharding | None = None,
    log: Callable[[str], None] = logging.info,
) -> TrainState:
    """`state` with params and batch_stats (raw and EMA alike) from model.init_from_torch.

    The backbone must load entirely (else a one-line ValueError from torch_weights); the
    heads take the state dict's values where names and shapes match (torchvision's 1000-way
    `fc` does not fit another class count: the classifier keeps its fresh initialisation);
    everything else keeps `state`'s values. The optimizer state is untouched (SGD momentum
    starts at zero either way). One log line says what was loaded, in how long, and the
    normalisation and image size used (images are not resized: they train at their own size).

    Raises FileNotFoundError / ValueError (one line) from torch_weights.load_state_dict,
    torch_weights.architecture_of and torch_weights.convert.
    """
    source = config.model.init_from_torch
    start = time.monotonic()
    architecture, options = torch_weights.architecture_of(config.model)
    state_dict = torch_weights.load_state_dict(source)
    template = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    variables, report = torch_weights.convert(
        state_dict,
        architecture,
        template,
        strip_prefix=_strip_prefix(state_dict),
        log=logging.warning,
        **options,
    )
    put = lambda tree: jax.tree.map(
        lambda leaf: jax.device_put(np.asarray(leaf), sharding) if sharding else jnp.asarray(leaf),
        tree,
    )
    params, batch_stats = variables["params"], variables["batch_stats"]
    table = {
        layer.torch_name: layer.flax_path[0]
        for layer in torch_weights.MAPPINGS[architecture](**options)
    }
    loaded = {table[key.rsplit(".", 1)[0]] for key in report.loaded}
    heads = sorted(loaded - {"backbone"})
    fresh = sorted(name for name in params if name not in loaded)
    log(
        f"Loaded {len(report.loaded)} tensors of {source} ({architecture}, "
        f"{', '.join(f'{k}={v}' for k, v in options.items())}) in "
        f"{time.monotonic() - start:.1f} s into the backbone"
        f"{' and ' + ', '.join(heads) if heads else ''} (raw and EMA); fresh: "
        f"{', '.join(fresh) or 'none'}; images normalised with mean "
        f"{tuple(config.dataset.mean)}, std {tuple(config.dataset.std)}, used at their own "
        "size (not resized)"
    )
    return state.replace(
        params=put(params),
        batch_stats=put(batch_stats),
        ema_params=put(params),
        ema_batch_stats=put(batch_stats),
    )
