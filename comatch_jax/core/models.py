"""Backbones and the heads on top of them (Flax Linen).

A Network maps float images [B, H, W, C] (already normalised) to a dict with `logits`
[B, num_classes], `embedding` [B, low_dim] (unit norm, CoMatch's z), `features` [B, F]
(the pooled backbone output, used by probes and analysis) and, when configured, the SSL
`projection` / `prediction` and the autoencoder's `reconstruction`. Backbone parameters
live under 'backbone', so a pretrained encoder can be loaded into another run. Parameters
are float32; the backbone computes in `dtype` (bfloat16 on GPU/TPU), the heads in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# Official CoMatch WRN init (WideResNet.py, WideResnetBackbone.init_weight): every conv
# kaiming_normal_(a=0, mode='fan_in', nonlinearity='leaky_relu'), i.e. N(0, 2 / fan_in).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torchvision ResNets: kaiming_normal_(mode='fan_out', nonlinearity='relu').
_resnet_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# The SSL projector / predictor MLPs and the decoder.
_dense_init = nn.initializers.xavier_normal()
# PyTorch's default nn.Linear init (kaiming_uniform_(a=sqrt(5))): U(-1/sqrt(fan_in), ...).
# The official CoMatch heads keep it (WideResnet.init_weight is never called).
_torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear(features: int, fan_in: int, name: str) -> nn.Dense:
    """A float32 nn.Dense initialised as PyTorch's default nn.Linear(fan_in, features):
    kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def bias_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.Dense(
        features,
        dtype=jnp.float32,
        kernel_init=_torch_linear_kernel_init,
        bias_init=bias_init,
        name=name,
    )


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ||x||, computed in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class BatchNorm(nn.Module):
    """BatchNorm (Ioffe & Szegedy 2015) whose training statistics can be per group of the batch.

    With `groups` = 1 this is flax's nn.BatchNorm (same variables, same float32 statistics,
    E[x^2] - E[x]^2 variance, running averages with `momentum`). With `groups` = G the batch
    is G contiguous chunks, each normalised with its own mean and variance: laid out one
    chunk per device, that is per-device BatchNorm (PyTorch DDP without SyncBatchNorm),
    computed without cross-device traffic. The running statistics take the mean of the
    groups' statistics. Evaluation (use_running_average) does not depend on `groups`.
    `unbiased_running_var`: the running variance takes the unbiased batch variance (n / (n -
    1)), as PyTorch's. `frozen`: always the running statistics, never updated (fine-tuning
    with a frozen BatchNorm, detectron2's FrozenBatchNorm).
    """

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    groups: int = 1
    unbiased_running_var: bool = False
    frozen: bool = False
    scale_init: Callable[..., Any] = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        if self.use_running_average or self.frozen:
            mean, var = ra_mean.value, ra_var.value
            y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        else:
            groups = 1 if self.is_initializing() else self.groups
            if x.shape[0] % groups:
                raise ValueError(
                    f"BatchNorm: batch {x.shape[0]} is not divisible into {groups} groups"
                )
            grouped = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
            grouped = grouped.reshape(groups, -1, features)
            mean = jnp.mean(grouped, axis=1, keepdims=True)
            var = jnp.maximum(0.0, jnp.mean(jnp.square(grouped), axis=1, keepdims=True) - mean**2)
            y = (x.reshape(groups, -1, features) - mean) * (
                jax.lax.rsqrt(var + self.epsilon) * scale
            ) + bias
            y = y.reshape(x.shape)
            if not self.is_initializing():
                if self.unbiased_running_var:
                    count = grouped.shape[1]
                    var = var * (count / max(count - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * jnp.mean(
                    mean, axis=(0, 1)
                )
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * jnp.mean(
                    var, axis=(0, 1)
                )
        return y.astype(self.dtype or jnp.result_type(x, scale))


class MLP(nn.Module):
    """float32 Dense layers with BatchNorm (`norm`) + ReLU between them (the SSL projectors
    and predictor)."""

    widths: Sequence[int]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, dtype=jnp.float32, kernel_init=_dense_init)(x)
            if i < len(self.widths) - 1:
                x = nn.relu(self.norm(use_running_average=not train)(x))
        return x


class Decoder(nn.Module):
    """Features -> image: a dense layer to a 1/4-size map, two 2x transposed convolutions."""

    image_shape: tuple[int, int, int]
    width: int
    dtype: Any

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        height, width, channels = self.image_shape
        h, w = -(-height // 4), -(-width // 4)
        x = nn.Dense(h * w * self.width, dtype=self.dtype, kernel_init=_dense_init)(features)
        x = nn.relu(x.reshape(-1, h, w, self.width))
        x = nn.relu(nn.ConvTranspose(self.width // 2, (4, 4), strides=(2, 2), dtype=self.dtype)(x))
        x = nn.ConvTranspose(channels, (4, 4), strides=(2, 2), dtype=self.dtype)(x)
        return x[:, :height, :width, :].astype(jnp.float32)  # logits of pixel intensity


class Network(nn.Module):
    """A backbone and the heads a method needs.

    Always: `logits` (linear classifier) and `embedding` (CoMatch's projection head: a
    2-layer MLP to low_dim, L2-normalised). Optional: `projection` (an SSL projector MLP,
    Barlow Twins / SimSiam), `prediction` (SimSiam's predictor on the projection) and
    `reconstruction` (the autoencoder's decoder output, pixel logits).

    The backbone runs in `dtype` (e.g. bfloat16); its pooled features are cast to float32
    and every head computes in float32 (a bf16 embedding divided by CoMatch's t = 0.1 would
    carry ~1e-2 relative error into the graph losses). The classifier and the embedding head
    (`classifier`, `head_hidden`, `head_out`) are the official WideResnet's `classifier`,
    `fc1`, `fc2` with PyTorch's default nn.Linear initialisation (WideResNet.py: the heads'
    init_weight is never called).
    """

    backbone: nn.Module
    num_classes: int
    low_dim: int
    leaky_slope: float
    norm: Callable[..., nn.Module]  # the heads' float32 BatchNorm (the projector's)
    projector_widths: Sequence[int] = ()
    predictor_widths: Sequence[int] = ()
    decoder_shape: tuple[int, int, int] | None = None
    decoder_width: int = 64
    bn_groups: int = 1  # the train step lays the batch out as this many per-device chunks

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        features = self.backbone(x, train).astype(jnp.float32)
        width = features.shape[-1]
        logits = torch_linear(self.num_classes, width, "classifier")(features)
        hidden = nn.leaky_relu(
            torch_linear(width, width, "head_hidden")(features), self.leaky_slope
        )
        outputs = {
            "logits": logits,
            "embedding": l2_normalize(torch_linear(self.low_dim, width, "head_out")(hidden)),
            "features": features,
        }
        if self.projector_widths:
            projection = MLP(self.projector_widths, self.norm, name="projector")(features, train)
            outputs["projection"] = projection
            if self.predictor_widths:
                predictor = MLP(self.predictor_widths, self.norm, name="predictor")
                outputs["prediction"] = predictor(projection, train)
        if self.decoder_shape is not None:
            outputs["reconstruction"] = Decoder(
                self.decoder_shape, self.decoder_width, jnp.float32, name="decoder"
            )(features)
        return outputs


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 (VALID: an odd last row/column is dropped), as a
    reshape and a max: nn.max_pool's gradient on XLA:CPU builds int32 index maps the size
    of the activations (reduce-window with iotas), several times slower on a CPU."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class SmallCNN(nn.Module):
    """A small VGG-style CNN backbone for CPU runs: stages of (conv3x3-BN-LReLU) x n, max-pool 2."""

    widths: Sequence[int]
    convs_per_stage: int
    norm: Callable[..., nn.Module]  # BatchNorm with its settings (create_model)
    dtype: Any
    leaky_slope: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(self.norm, use_running_average=not train)
        x = x.astype(self.dtype)
        for stage, width in enumerate(self.widths):
            for _ in range(self.convs_per_stage):
                x = nn.Conv(
                    width, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=_conv_init
                )(x)
                x = nn.leaky_relu(norm()(x), self.leaky_slope)
            if stage < len(self.widths) - 1:
                x = max_pool_2x2(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class WideBasicBlock(nn.Module):
    """The official CoMatch/FixMatch pre-activation block (WideResNet.py, BasicBlockPreAct).

    act = LeakyReLU_0.1(bn1(x)); residual = conv2(LeakyReLU_0.1(bn2(conv1(act)))), conv1 with
    the block's stride; shortcut = act if `pre_res_act` (first block of the first stage
    only) else the raw x, through a 1x1 `downsample` conv (stride, no bias) when the width or
    the stride changes; output = shortcut + residual. Module names are the official ones.
    """

    width: int
    stride: int
    pre_res_act: bool
    norm: Callable[..., nn.Module]
    leaky_slope: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init, padding=1
        )
        act = nn.leaky_relu(self.norm(name="bn1")(x), self.leaky_slope)
        y = conv(self.width, (3, 3), strides=self.stride, name="conv1")(act)
        y = nn.leaky_relu(self.norm(name="bn2")(y), self.leaky_slope)
        y = conv(self.width, (3, 3), name="conv2")(y)
        shortcut = act if self.pre_res_act else x
        if x.shape[-1] != self.width or self.stride != 1:
            downsample = conv(self.width, (1, 1), self.stride, padding="VALID", name="downsample")
            shortcut = downsample(shortcut)
        return shortcut + y


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016) as in the official CoMatch code.

    WideResNet.py (WideResnetBackbone): conv1 3x3 to 16 channels, three stages
    `layer{1,2,3}_{i}` of (depth - 4) / 6 WideBasicBlocks with widths 16k, 32k, 64k and
    strides 1, 2, 2 (pre_res_act only in layer1_0), then bn_last + LeakyReLU_0.1 and a
    global average pool. Returns float32 features [B, 64k]. BatchNorm momentum 0.001 in
    PyTorch terms is bn_momentum = 0.999 here.
    """

    depth: int
    widen_factor: int
    norm: Callable[..., nn.Module]  # BatchNorm with its settings (create_model)
    dtype: Any
    leaky_slope: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
        blocks_per_group = (self.depth - 4) // 6
        norm = functools.partial(self.norm, use_running_average=not train)
        x = x.astype(self.dtype)
        x = nn.Conv(
            16, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=_conv_init, name="conv1"
        )(x)
        widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
        for group, (width, stride) in enumerate(zip(widths, (1, 2, 2))):
            for block in range(blocks_per_group):
                x = WideBasicBlock(
                    width=width,
                    stride=stride if block == 0 else 1,
                    pre_res_act=group == 0 and block == 0,
                    norm=norm,
                    leaky_slope=self.leaky_slope,
                    dtype=self.dtype,
                    name=f"layer{group + 1}_{block}",
                )(x)
        x = nn.leaky_relu(norm(name="bn_last")(x), self.leaky_slope)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ResNetBlock(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1-3x3-1x1, expansion 4) post-activation ResNet block."""

    width: int
    stride: int
    bottleneck: bool
    norm: Callable[..., nn.Module]
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # PyTorch's padding (3x3: 1 on every side; 1x1: none). Flax's 'SAME' pads a stride-2
        # 3x3 conv of an even input by (0, 1), which samples other pixels than torchvision.
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_resnet_conv_init
        )
        pad1 = ((1, 1), (1, 1))
        out_width = self.width * 4 if self.bottleneck else self.width
        if self.bottleneck:
            y = nn.relu(self.norm()(conv(self.width, (1, 1), padding="VALID")(x)))
            y = nn.relu(self.norm()(conv(self.width, (3, 3), strides=self.stride, padding=pad1)(y)))
            y = self.norm(scale_init=nn.initializers.zeros)(
                conv(out_width, (1, 1), padding="VALID")(y)
            )
        else:
            y = nn.relu(self.norm()(conv(self.width, (3, 3), strides=self.stride, padding=pad1)(x)))
            y = self.norm(scale_init=nn.initializers.zeros)(
                conv(self.width, (3, 3), padding=pad1)(y)
            )
        if x.shape[-1] != out_width or self.stride != 1:
            x = self.norm()(conv(out_width, (1, 1), strides=self.stride, padding="VALID")(x))
        return nn.relu(x + y)


# torchvision's resnet.py: depth -> (blocks per stage, bottleneck).
RESNET_STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


class ResNet(nn.Module):
    """ResNet-18/34/50 (He et al. 2016) laid out as torchvision's (ResNet-50 is v1.5: the
    stride in the bottleneck's 3x3 conv), with PyTorch's padding, so converted torchvision /
    timm weights (comatch_jax.core.torch_weights) compute the same features.

    stem='imagenet': torchvision's 7x7/2 conv (padding 3) + BN + ReLU + 3x3/2 max-pool
    (padding 1), for 96-224 px and ImageNet weights; 'cifar': a 3x3/1 conv (no pool), for
    32 px training from scratch (ImageNet weights do not fit its conv1). BatchNorm eps 1e-5
    (PyTorch's). Flax module names are automatic (Conv_i, BatchNorm_i, ResNetBlock_i); the
    torch names are in torch_weights.resnet_mapping.
    """

    depth: int
    stem: str
    norm: Callable[..., nn.Module]  # BatchNorm with its settings (create_model)
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.depth not in RESNET_STAGES:
            raise ValueError(
                f"ResNet depth must be one of {sorted(RESNET_STAGES)}, got {self.depth}"
            )
        stages, bottleneck = RESNET_STAGES[self.depth]
        norm = functools.partial(self.norm, use_running_average=not train)
        size, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
        x = nn.Conv(
            64,
            (size, size),
            strides=stride,
            padding=((size // 2, size // 2),) * 2,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_resnet_conv_init,
        )(x.astype(self.dtype))
        x = nn.relu(norm()(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(stages):
            for block in range(num_blocks):
                x = ResNetBlock(
                    width=64 * 2**stage,
                    stride=2 if stage > 0 and block == 0 else 1,
                    bottleneck=bottleneck,
                    norm=norm,
                    dtype=self.dtype,
                )(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def create_model(
    config: ml_collections.ConfigDict,
    num_classes: int,
    image_shape: tuple[int, int, int] | None = None,
    num_devices: int = 1,
) -> nn.Module:
    """Builds the Network (backbone `config.name` + heads) from the `model` sub-config.

    `image_shape` is needed only when config.decoder is on (the autoencoder). `num_devices`
    is the size of the data-parallel mesh: with config.batch_norm = 'per_device' each
    device's shard of the batch is normalised with its own statistics; with 'global' the
    statistics span the global batch, so any number of devices computes what one would.
    Every BatchNorm shares bn_momentum and bn_unbiased_running_var; the backbone's computes
    in config.dtype and is frozen with freeze_backbone_bn. config_lib.validate_config checks
    the name, dtype, stem and batch_norm mode.
    """
    bn_groups = num_devices if config.batch_norm == "per_device" else 1
    dtype = _DTYPES[config.dtype]
    norm = functools.partial(
        BatchNorm,
        momentum=config.bn_momentum,
        groups=bn_groups,
        unbiased_running_var=config.bn_unbiased_running_var,
    )
    backbone_norm = functools.partial(norm, dtype=dtype, frozen=config.freeze_backbone_bn)
    common = dict(norm=backbone_norm, dtype=dtype, name="backbone")
    backbone = {
        "small_cnn": lambda: SmallCNN(tuple(config.widths), config.convs_per_stage, **common),
        "wide_resnet": lambda: WideResNet(config.depth, config.widen_factor, **common),
        "resnet": lambda: ResNet(config.depth, config.stem, **common),
    }[config.name]()
    return Network(
        backbone=backbone,
        num_classes=num_classes,
        low_dim=config.low_dim,
        leaky_slope=getattr(backbone, "leaky_slope", 0.0),  # ResNet: ReLU
        norm=functools.partial(norm, dtype=jnp.float32),
        projector_widths=tuple(config.projector_widths),
        predictor_widths=tuple(config.predictor_widths),
        decoder_shape=tuple(image_shape) if config.decoder else None,
        decoder_width=config.decoder_width,
        bn_groups=bn_groups,
    )
