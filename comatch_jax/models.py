"""Backbones with a classifier head and an L2-normalised projection head (Flax Linen).

Every model maps float images [B, H, W, C] (already normalised) to a dict with
`logits` [B, num_classes], `embedding` [B, low_dim] (unit norm, as CoMatch's z) and
`features` [B, F] (the pooled backbone output, used by probes and analysis).
`dtype` is the activation dtype (bfloat16 on GPU/TPU); parameters stay float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# Official WRN init: kaiming normal (fan_out, leaky_relu) for convs, xavier normal for linear.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.xavier_normal()


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ||x||, computed in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class Heads(nn.Module):
    """Classifier (one linear layer) and projection head (2-layer MLP -> low_dim, L2-normalised)."""

    num_classes: int
    low_dim: int
    leaky_slope: float
    dtype: Any

    @nn.compact
    def __call__(self, features: jax.Array) -> dict[str, jax.Array]:
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_dense_init)
        logits = dense(self.num_classes, name="classifier")(features)
        hidden = nn.leaky_relu(dense(features.shape[-1], name="head_hidden")(features), self.leaky_slope)
        embedding = dense(self.low_dim, name="head_out")(hidden)
        return {
            "logits": logits.astype(jnp.float32),
            "embedding": l2_normalize(embedding),
            "features": features.astype(jnp.float32),
        }


class SmallCNN(nn.Module):
    """A small VGG-style CNN for CPU runs: stages of (conv3x3-BN-LeakyReLU) x n, max-pool 2."""

    num_classes: int
    widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    low_dim: int = 64
    bn_momentum: float = 0.999
    leaky_slope: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, dtype=self.dtype
        )
        x = x.astype(self.dtype)
        for stage, width in enumerate(self.widths):
            for _ in range(self.convs_per_stage):
                x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=_conv_init)(x)
                x = nn.leaky_relu(norm()(x), self.leaky_slope)
            if stage < len(self.widths) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        features = jnp.mean(x, axis=(1, 2))
        return Heads(self.num_classes, self.low_dim, self.leaky_slope, self.dtype)(features)


class WideBasicBlock(nn.Module):
    """Pre-activation WRN block (BN-LReLU-conv-BN-LReLU-conv) as in the official FixMatch/CoMatch."""

    width: int
    stride: int
    activate_before_residual: bool
    norm: Callable[..., nn.Module]
    leaky_slope: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init, padding=1
        )
        needs_projection = x.shape[-1] != self.width
        if not needs_projection:
            conv_input = nn.leaky_relu(self.norm()(x), self.leaky_slope)
        elif self.activate_before_residual:
            x = conv_input = nn.leaky_relu(self.norm()(x), self.leaky_slope)
        else:  # as in the official code, the projecting block convolves the raw input
            conv_input = x
        y = conv(self.width, (3, 3), strides=self.stride)(conv_input)
        y = nn.leaky_relu(self.norm()(y), self.leaky_slope)
        y = conv(self.width, (3, 3))(y)
        if needs_projection:
            x = nn.Conv(
                self.width, (1, 1), strides=self.stride, use_bias=False, dtype=self.dtype,
                kernel_init=_conv_init,
            )(x)
        return x + y


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko & Komodakis), the variant of the official CoMatch code."""

    num_classes: int
    depth: int = 28
    widen_factor: int = 2
    low_dim: int = 64
    bn_momentum: float = 0.999
    leaky_slope: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
        blocks_per_group = (self.depth - 4) // 6
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=1e-5, dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        x = nn.Conv(16, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=_conv_init)(x)
        for group, (width, stride) in enumerate(
            zip((16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor), (1, 2, 2))
        ):
            for block in range(blocks_per_group):
                x = WideBasicBlock(
                    width=width,
                    stride=stride if block == 0 else 1,
                    activate_before_residual=group == 0 and block == 0,
                    norm=norm,
                    leaky_slope=self.leaky_slope,
                    dtype=self.dtype,
                )(x)
        x = nn.leaky_relu(norm()(x), self.leaky_slope)
        features = jnp.mean(x, axis=(1, 2))
        return Heads(self.num_classes, self.low_dim, self.leaky_slope, self.dtype)(features)


class ResNetBlock(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1-3x3-1x1, expansion 4) post-activation ResNet block."""

    width: int
    stride: int
    bottleneck: bool
    norm: Callable[..., nn.Module]
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        out_width = self.width * 4 if self.bottleneck else self.width
        if self.bottleneck:
            y = nn.relu(self.norm()(conv(self.width, (1, 1))(x)))
            y = nn.relu(self.norm()(conv(self.width, (3, 3), strides=self.stride)(y)))
            y = self.norm(scale_init=nn.initializers.zeros)(conv(out_width, (1, 1))(y))
        else:
            y = nn.relu(self.norm()(conv(self.width, (3, 3), strides=self.stride)(x)))
            y = self.norm(scale_init=nn.initializers.zeros)(conv(self.width, (3, 3))(y))
        if x.shape[-1] != out_width or self.stride != 1:
            x = self.norm()(conv(out_width, (1, 1), strides=self.stride)(x))
        return nn.relu(x + y)


_RESNET_STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


class ResNet(nn.Module):
    """ResNet-18/34/50. stem='imagenet' (7x7/2 + max-pool, for 96 px) or 'cifar' (3x3/1)."""

    num_classes: int
    depth: int = 18
    stem: str = "imagenet"
    low_dim: int = 64
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        if self.depth not in _RESNET_STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNET_STAGES)}, got {self.depth}")
        stages, bottleneck = _RESNET_STAGES[self.depth]
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=1e-5, dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = nn.Conv(64, (7, 7), strides=2, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)(x)
            x = nn.relu(norm()(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        elif self.stem == "cifar":
            x = nn.Conv(64, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=_conv_init)(x)
            x = nn.relu(norm()(x))
        else:
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        for stage, num_blocks in enumerate(stages):
            for block in range(num_blocks):
                x = ResNetBlock(
                    width=64 * 2**stage,
                    stride=2 if stage > 0 and block == 0 else 1,
                    bottleneck=bottleneck,
                    norm=norm,
                    dtype=self.dtype,
                )(x)
        features = jnp.mean(x, axis=(1, 2))
        return Heads(self.num_classes, self.low_dim, 0.0, self.dtype)(features)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MODEL_NAMES = ("small_cnn", "wide_resnet", "resnet")


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the backbone named by `config.name` from the `model` sub-config."""
    if config.dtype not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}")
    common = dict(
        num_classes=num_classes,
        low_dim=config.low_dim,
        bn_momentum=config.bn_momentum,
        dtype=_DTYPES[config.dtype],
    )
    if config.name == "small_cnn":
        return SmallCNN(
            widths=tuple(config.widths), convs_per_stage=config.convs_per_stage, **common
        )
    if config.name == "wide_resnet":
        return WideResNet(depth=config.depth, widen_factor=config.widen_factor, **common)
    if config.name == "resnet":
        return ResNet(depth=config.depth, stem=config.stem, **common)
    raise ValueError(f"Unknown model.name {config.name!r}; expected one of {MODEL_NAMES}")
