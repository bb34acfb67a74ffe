"""Starting a run from pretrained PyTorch weights (`--config.model.init_from_torch=SOURCE`).

After it prepares the data, the trainer calls `with_pretrained_normalization(config, data)`
(ImageNet's mean/std unless the user set dataset.mean/std), and `initialise_from_torch(state,
config)` on a fresh TrainState (not on a resumed one: the checkpoint has the weights then).
The conversion itself is comatch_jax.core.torch_weights. Imports neither TensorFlow nor torch.
"""

from __future__ import annotations

import dataclasses
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
from comatch_jax.data.pipeline import SemiSupervisedData


def with_pretrained_normalization(
    config: ml_collections.ConfigDict, data: SemiSupervisedData
) -> SemiSupervisedData:
    """`data` normalised as torchvision's and timm's ImageNet weights expect when
    model.init_from_torch is set and the user left dataset.mean/std empty: ImageNet's
    (config_lib.IMAGENET_MEAN / _STD), and for 1-channel images their single-channel
    equivalent, the mean of the three means and of the three stds (initialise_from_torch
    sums conv1's kernel over its 3 input channels, so a gray image is seen as 3 equal
    channels). Otherwise `data` as it is: a user's own values always win."""
    if not config.model.init_from_torch or (config.dataset.mean and config.dataset.std):
        return data
    mean, std = config_lib.IMAGENET_MEAN, config_lib.IMAGENET_STD
    if data.labeled_images.shape[-1] == 1:
        mean, std = (round(sum(mean) / 3, 4),), (round(sum(std) / 3, 4),)
    return dataclasses.replace(data, mean=mean, std=std)


def _adapt_input_channels(
    state_dict: dict[str, np.ndarray],
    first_conv: torch_weights.LayerMapping,
    template: dict,
    prefix: str,
    log: Callable[[str], None],
) -> dict[str, np.ndarray]:
    """`state_dict` whose first conv fits the images' channel count (the template's): a
    3-channel kernel [O, 3, kh, kw] on 1-channel images is summed over its input channels,
    as timm's adapt_input_conv does for in_chans=1 (timm/models/_manipulate.py). Raises
    ValueError (one line) for another mismatch."""
    key = f"{prefix}{first_conv.torch_name}.weight"
    kernel = template["params"]
    for name in first_conv.flax_path:
        kernel = kernel[name]
    channels = kernel["kernel"].shape[2]  # Flax [kh, kw, in, out]
    if key not in state_dict or state_dict[key].shape[1] == channels:
        return state_dict
    weights = state_dict[key].shape[1]
    if (weights, channels) != (3, 1):
        raise ValueError(
            f"the weights expect {weights} input channels and the images have {channels}"
        )
    log(
        "The weights expect 3 input channels and the images have 1: their first convolution "
        f"({key}) is summed over its input channels, as timm does for in_chans=1."
    )
    return {**state_dict, key: state_dict[key].sum(axis=1, keepdims=True)}


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
    `fc` fits no other class count: the classifier keeps its fresh initialisation); the rest,
    the optimizer state included, keeps `state`'s values. One log line says what was loaded,
    in how long, and the normalisation used (images train at their own size). Raises
    FileNotFoundError / ValueError (one line) from torch_weights.
    """
    source = config.model.init_from_torch
    start = time.monotonic()
    architecture, options = torch_weights.architecture_of(config.model)
    mapping = torch_weights.MAPPINGS[architecture](**options)
    state_dict = torch_weights.load_state_dict(source)
    template = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    # 'module.' before every key: a DistributedDataParallel checkpoint.
    prefix = "module." if state_dict and all(k.startswith("module.") for k in state_dict) else ""
    state_dict = _adapt_input_channels(state_dict, mapping[0], template, prefix, log)
    variables, report = torch_weights.convert(
        state_dict, architecture, template, strip_prefix=prefix, log=logging.warning, **options
    )
    put = lambda tree: jax.tree.map(
        lambda leaf: jax.device_put(np.asarray(leaf), sharding) if sharding else jnp.asarray(leaf),
        tree,
    )
    params, batch_stats = variables["params"], variables["batch_stats"]
    table = {layer.torch_name: layer.flax_path[0] for layer in mapping}
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
