"""Batched image augmentations that run inside a jitted train step.

Every view takes a PRNG key and a batch ``uint8[B, H, W, C]`` (C = 1 or 3) and
returns a batch of the same shape and dtype. The key is split into B keys and a
per-image function is ``jax.vmap``-ed over the batch, so every image draws its
own random parameters. All shapes are static; the views are jittable with their
keyword options held fixed (they are Python values, not traced). Each view is
compiled once per (options, input shape) and cached, so eager calls are fast
too; inside an outer ``jax.jit`` it is simply inlined. ``none`` returns the batch as
it is (experiments/benchmark.py times the step without augmentation with it).

Views
-----
``weak``         reflect pad-and-crop (a random integer shift in [-pad, pad - 1], as the
                 official crop offset 0 .. 2 pad - 1) then a random horizontal flip.
``randaugment``  weak + ``num_ops`` RandAugment ops (the official CoMatch / FixMatch
                 RandomAugment(N=2, M=10), each applied with probability ``op_prob``, in
                 the drawn order) + Cutout.
``simclr``       random resized crop + flip + colour jitter + random grayscale
                 (torchvision semantics, as used by CoMatch's contrastive view).

The official code is github salesforce/CoMatch: datasets/transform.py (PadandRandomCrop,
RandomHorizontalFlip), datasets/randaugment.py (RandomAugment), datasets/cifar.py (views).

Speed design
------------
* No ``lax.switch`` over the 14 ops (under ``vmap`` it computes every branch for every
  image): each drawn op is ONE bilinear affine warp (the identity matrix, an exact no-op,
  for photometric ops), then ONE parameterised photometric step (identity parameters for
  geometric ops; see _photometric_step), in the drawn order whatever the ops, so a
  geometric op drawn after a photometric one sees its result and vice versa (AutoContrast
  after Rotate counts the gray fill, as the official code). The weak flip + crop before
  them is one integer gather.
* The ops run as warp_0 and then a ``lax.scan`` of (photometric_i, warp_{i+1}), the last
  warp the identity, so that every photometric step reads a materialised image (the loop
  carry): fused into its producer, its many per-pixel consumers would recompute it
  (experiments/RESULTS.md has the timings).

RandAugment ops at M = 10 (datasets/randaugment.py ``arg_dict`` with MAX_LEVEL = 10)
------------------------------------------------------------------------------------
==============  ==========================================================
op              parameter when drawn and applied
==============  ==========================================================
Identity        --
AutoContrast    per-channel min -> 0, max -> 255 (identity if min == max)
Equalize        per-channel histogram equalisation (PIL ``ImageOps`` rule)
Rotate          +-30 degrees (random sign) about (W/2, H/2), bilinear, fill
Solarize        threshold int(10/10 * 256) = 256: a no-op (kept in the pool so that
                the other ops keep their 1/14 probability)
Color           factor 1.9 (10/10 * 1.8 + 0.1; no random sign)
Contrast        factor 1.9 around the mean luma level
Brightness      factor 1.9 (black degenerate)
Sharpness       factor 1.9, degenerate = 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13,
                border pixels unchanged
ShearX          x_in = x_out - s * y_out, s = +-0.3 (about the top-left pixel),
                bilinear, fill
ShearY          y_in = y_out - s * x_out, s = +-0.3, bilinear, fill
TranslateX      +-10 px on 32 px images (TRANSLATE_FRACTION * W), bilinear, fill
TranslateY      +-10 px on 32 px (TRANSLATE_FRACTION * H), bilinear, fill
Posterize       keep the 4 most significant bits
==============  ==========================================================
Geometric ops are cv2.warpAffine(INTER_LINEAR) with a constant border ``fill`` (128,
the official replace_value). Cutout (always, after the ops; official ``cutout_func(img,
16, (128,)*3)``): a ``round(cutout_fraction * H)`` square (16 on 32 px) whose top-left
corner is ``centre - size // 2``, the centre a uniformly drawn pixel, clipped at the
borders, filled with ``fill``.

Known differences from the official NumPy/OpenCV ops, all below one gray level per op or
confined to degenerate cases: results are rounded where OpenCV/NumPy truncate
(``astype(uint8)``); OpenCV's bilinear weights are fixed-point (15 bits; coordinates at
1/32 px, as here); Color and Contrast use PIL's luma weights 0.299 R + 0.587 G + 0.114 B
where the official functions apply (0.114, 0.587, 0.299) to CIFAR's RGB channels;
Sharpness clips to [0, 255] where the official cast of out-of-range floats to uint8 wraps
around.

Per-image ops
-------------
``warp`` (geometric), ``photometric`` and ``cutout`` operate on ONE image ``[H, W, C]``
given as uint8 or as float in [0, 255]. They return float32 in [0, 255] holding whole
numbers (like the official uint8 output). Geometric ops are 3x3 affine matrices in OpenCV's
convention: pixel centres at integer coordinates, the matrix maps an OUTPUT point
``(x, y, 1)`` (x = column, y = row) to the INPUT point that is sampled bilinearly.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import dm_pix
import jax
import jax.numpy as jnp

# RandAugment op indices (the pool is sampled uniformly with replacement).
RANDAUGMENT_OPS = (
    "identity",
    "auto_contrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "posterize",
)
(
    IDENTITY,
    AUTO_CONTRAST,
    EQUALIZE,
    ROTATE,
    SOLARIZE,
    COLOR,
    CONTRAST,
    BRIGHTNESS,
    SHARPNESS,
    SHEAR_X,
    SHEAR_Y,
    TRANSLATE_X,
    TRANSLATE_Y,
    POSTERIZE,
) = range(len(RANDAUGMENT_OPS))

# Magnitudes of the official RandomAugment(N=2, M=10) (github salesforce/CoMatch,
# datasets/randaugment.py; see the table in the module docstring).
MAX_ROTATE_DEGREES = 30.0  # rotate_level_to_args: 10 / 10 * 30, random sign
MAX_SHEAR = 0.3  # shear_level_to_args: 10 / 10 * 0.3, random sign
TRANSLATE_FRACTION = 10.0 / 32.0  # translate_const = 10 px on CIFAR's 32 px, random sign
ENHANCE_FACTOR = 1.9  # enhance_level_to_args: 10 / 10 * 1.8 + 0.1, no sign
SOLARIZE_THRESHOLD = 256  # solarize_level_to_args: int(10 / 10 * 256): a no-op
POSTERIZE_BITS = 4  # posterize_level_to_args: int(10 / 10 * 4)

# PIL's RGB -> L weights (ITU-R 601-2 luma).
_PIL_LUMA = (0.299, 0.587, 0.114)
# Tries torchvision's RandomResizedCrop makes before its centre-crop fallback.
_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------------- Small helpers


def _as_float(image: jax.Array) -> jax.Array:
    """Casts an image to float32 without rescaling."""
    return jnp.asarray(image).astype(jnp.float32)


def _round_pixels(image: jax.Array) -> jax.Array:
    """Rounds and clips to whole numbers in [0, 255], kept as float32."""
    return jnp.clip(jnp.round(image), 0.0, 255.0)


def _to_uint8(image: jax.Array) -> jax.Array:
    """Rounds, clips and casts to uint8."""
    return _round_pixels(image).astype(jnp.uint8)


@functools.lru_cache(maxsize=None)
def _batched_view(per_image: Callable[..., jax.Array], **options: Any) -> Callable:
    """``jit(vmap(per_image))`` with one key per image, cached per static options."""
    per_image = functools.partial(per_image, **options)

    @jax.jit
    def view(rng: jax.Array, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"expected images [B, H, W, C], got shape {images.shape}")
        keys = jax.random.split(rng, images.shape[0])
        return jax.vmap(per_image)(keys, images)

    return view


def _gather_pixels(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Returns ``image[rows, cols]`` for in-range integer index maps ``[H', W']``."""
    height, width, channels = image.shape
    flat = image.reshape(height * width, channels)
    return flat.at[rows * width + cols].get(mode="promise_in_bounds")


def reflect_index(index: jax.Array, size: int) -> jax.Array:
    """Maps integer indices into [0, size) with reflect (no edge repeat) boundary.

    Matches numpy/torch ``reflect`` padding: for size 4, -1 -> 1 and 4 -> 2.
    """
    if size == 1:
        return jnp.zeros_like(index)
    period = 2 * (size - 1)
    index = jnp.abs(index) % period
    return jnp.where(index >= size, period - index, index)


# ---------- Geometric ops: 3x3 inverse affine matrices (OpenCV convention), bilinear warp


def _matrix(a: Any, b: Any, c: Any, d: Any, e: Any, f: Any) -> jax.Array:
    entries = [jnp.asarray(v, jnp.float32) for v in (a, b, c, d, e, f, 0.0, 0.0, 1.0)]
    return jnp.stack(entries).reshape(3, 3)


def rotate_matrix(degrees: Any, h: int, w: int) -> jax.Array:
    """Inverse map of the official Rotate: cv2.getRotationMatrix2D((w/2, h/2), degrees, 1).

    Counter-clockwise for positive degrees, about the point (w/2, h/2) in OpenCV's pixel
    coordinates (pixel centres at integers: half a pixel right of and below the true
    centre, as the official code). Returns the 3x3 output -> input map.
    """
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    centre_x, centre_y = w / 2.0, h / 2.0
    return _matrix(
        cos,
        -sin,
        centre_x - cos * centre_x + sin * centre_y,
        sin,
        cos,
        centre_y - sin * centre_x - cos * centre_y,
    )


def shear_x_matrix(s: Any) -> jax.Array:
    """Inverse map of the official ShearX (cv2.warpAffine of [[1, s, 0], [0, 1, 0]]):
    x_in = x_out - s * y_out, about the top-left pixel."""
    return _matrix(1.0, -jnp.asarray(s, jnp.float32), 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(s: Any) -> jax.Array:
    """Inverse map of the official ShearY ([[1, 0, 0], [s, 1, 0]]): y_in = y_out - s x_out."""
    return _matrix(1.0, 0.0, 0.0, -jnp.asarray(s, jnp.float32), 1.0, 0.0)


def translate_matrix(tx: Any, ty: Any) -> jax.Array:
    """Inverse map of the official TranslateX/Y (cv2 [[1, 0, -tx], [0, 1, -ty]]):
    output(x, y) = input(x + tx, y + ty), i.e. the content moves by (-tx, -ty)."""
    return _matrix(1.0, 0.0, tx, 0.0, 1.0, ty)


def _warp_bilinear(image: jax.Array, matrix: jax.Array, fill: Any) -> jax.Array:
    """cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT) of a channel-first ``[C, H, W]`` image.

    Output pixel (x, y) samples the input at ``matrix @ (x, y, 1)`` (pixel centres at
    integer coordinates; rounded to 1/32 px as OpenCV does) bilinearly from its 4
    neighbours; a neighbour outside the image reads ``fill``. Rounded to whole numbers in
    [0, 255] (cv2 writes uint8). An identity matrix returns the image unchanged. Returns
    float32.
    """
    channels, height, width = image.shape
    xs = jnp.arange(width, dtype=jnp.float32)[None, :]
    ys = jnp.arange(height, dtype=jnp.float32)[:, None]
    # OpenCV rounds source coordinates to 1/32 px (INTER_BITS = 5) before interpolating;
    # doing the same also makes floor() agree however XLA fuses the arithmetic.
    x_in = jnp.round((matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]) * 32.0) / 32.0
    y_in = jnp.round((matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]) * 32.0) / 32.0
    x0, y0 = jnp.floor(x_in), jnp.floor(y_in)
    wx, wy = x_in - x0, y_in - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    # One gather of 2x2 neighbourhoods instead of four gathers: pad the image by one
    # pixel of fill, stack each pixel's neighbourhood as a row [(H+1)(W+1), 4C] and gather
    # the rows of the top-left neighbours. Taps outside the image read the padding.
    padded = jnp.pad(_as_float(image), ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    quads = jnp.stack(
        [padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]]
    )  # [4, C, H + 1, W + 1]
    quads = quads.reshape(4 * channels, (height + 1) * (width + 1)).T
    inside = (y0 >= -1) & (y0 < height) & (x0 >= -1) & (x0 < width)
    rows = jnp.clip(y0 + 1, 0, height) * (width + 1) + jnp.clip(x0 + 1, 0, width)
    taps = quads.at[rows].get(mode="promise_in_bounds")  # [H, W, 4C]
    taps = jnp.moveaxis(taps.reshape(height, width, 4, channels), (2, 3), (0, 1))
    wx, wy = wx[None], wy[None]
    top = (1.0 - wx) * taps[0] + wx * taps[1]
    bottom = (1.0 - wx) * taps[2] + wx * taps[3]
    value = jnp.where(inside[None], (1.0 - wy) * top + wy * bottom, jnp.float32(fill))
    return _round_pixels(value)


@jax.jit
def warp(image: jax.Array, matrix: jax.Array, fill: Any) -> jax.Array:
    """The official geometric op on one ``[H, W, C]`` image: cv2.warpAffine with bilinear
    interpolation and constant border ``fill``; ``matrix`` maps output to input
    coordinates (see rotate_matrix etc.). Returns float32 whole numbers in [0, 255]."""
    channel_first = jnp.moveaxis(_as_float(image), -1, 0)
    return jnp.moveaxis(_warp_bilinear(channel_first, matrix, fill), 0, -1)


def _warp_weak(
    image: jax.Array, flip: jax.Array, shift_y: jax.Array, shift_x: jax.Array
) -> jax.Array:
    """Reflect pad-and-crop by (shift_y, shift_x), then flip: ONE gather, input dtype.

    The official order (datasets/cifar.py: PadandRandomCrop, then RandomHorizontalFlip):
    output pixel (r, c) is pixel (r + shift_y, c' + shift_x) of the image with reflect
    boundary, c' = W - 1 - c when flipped, else c.
    """
    height, width, _ = image.shape
    rows = jnp.broadcast_to(jnp.arange(height)[:, None], (height, width))
    cols = jnp.broadcast_to(jnp.arange(width)[None, :], (height, width))
    cols = jnp.where(flip, width - 1 - cols, cols)
    rows, cols = reflect_index(rows + shift_y, height), reflect_index(cols + shift_x, width)
    return _gather_pixels(image, rows, cols)


# ------------- Photometric ops: one shared, parameterised step (blend + LUT-type ops)


class PhotometricParams(NamedTuple):
    """Parameters of one photometric step; the defaults are the identity.

    At most one op should be non-identity per step (that is how RandAugment
    uses it); the step is not meant to compose several ops.
    """

    auto_contrast: Any = False  # per-channel [min, max] -> [0, 255] (PIL autocontrast)
    equalize: Any = False  # per-channel histogram equalisation (PIL ImageOps.equalize)
    solarize_threshold: Any = 256  # pixels >= threshold are inverted; 256: none
    posterize_bits: Any = 8  # most significant bits kept
    brightness: Any = 1.0  # PIL ImageEnhance.Brightness: blend with black
    contrast: Any = 1.0  # PIL ImageEnhance.Contrast: blend with the rounded mean luma
    color: Any = 1.0  # PIL ImageEnhance.Color: blend with the grayscale image (C=1: identity)
    sharpness: Any = 1.0  # PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image


def _pil_grayscale(image: jax.Array) -> jax.Array:
    """PIL ``convert('L').convert(mode)``: rounded luma in every channel."""
    if image.shape[0] != 3:
        return image
    red, green, blue = image
    luma = jnp.round(_PIL_LUMA[0] * red + _PIL_LUMA[1] * green + _PIL_LUMA[2] * blue)
    return jnp.broadcast_to(luma, image.shape)


def _pil_smooth(image: jax.Array) -> jax.Array:
    """PIL ``ImageFilter.SMOOTH`` (3x3 kernel, weight 5 centre, / 13), borders kept."""
    _, height, width = image.shape
    if height < 3 or width < 3:
        return image
    neighbourhood = sum(
        image[:, dy : height - 2 + dy, dx : width - 2 + dx] for dy in range(3) for dx in range(3)
    )
    interior = jnp.round((neighbourhood + 4.0 * image[:, 1:-1, 1:-1]) / 13.0)
    # pad + select instead of ``.at[].set``, which lowers to a slow scatter on CPU.
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    is_border = (rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1)
    return jnp.where(is_border, image, jnp.pad(interior, ((0, 0), (1, 1), (1, 1))))


def _equalize_tables(pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """PIL ``ImageOps.equalize`` statistics of ``int32[C, N]`` pixels (as float32).

    Returns ``count_below`` (``[C, 256]``, pixels darker than each level) and
    ``step`` (``[C]``; PIL's bin width, 0 means identity).
    """
    channels, num_pixels = pixels.shape
    channel_offsets = jnp.arange(channels, dtype=jnp.int32)[:, None] * 256
    histogram = jnp.bincount((pixels + channel_offsets).reshape(-1), length=256 * channels).reshape(
        channels, 256
    )
    last_count = jnp.take_along_axis(histogram, pixels.max(axis=1)[:, None], axis=1)
    step = jnp.floor((num_pixels - last_count[:, 0]) / 256.0)
    count_below = jnp.cumsum(histogram, axis=1) - histogram
    return count_below.astype(jnp.float32), step.astype(jnp.float32)


def _blend(image: jax.Array, params: PhotometricParams) -> jax.Array:
    """Color / Sharpness: ``degenerate + factor * (image - degenerate)``."""
    use_smooth = jnp.asarray(params.sharpness) != 1.0
    degenerate = jnp.where(use_smooth, _pil_smooth(image), _pil_grayscale(image))
    factor = params.color * params.sharpness
    return _round_pixels(degenerate + factor * (image - degenerate))


def _photometric_step(image: jax.Array, params: PhotometricParams) -> jax.Array:
    """Applies one photometric op to a channel-first ``[C, H, W]`` image.

    Pipeline: blend (Color, Sharpness), then the per-channel lookup-table ops
    (AutoContrast, Equalize, Brightness, Contrast, Solarize, Posterize) as
    per-pixel arithmetic plus one gather into the equalisation table. All
    statistics come from the step's input; that is exact because only one op
    is active per step, so the blend is the identity whenever they are used.
    Channel-first keeps the per-channel work contiguous (faster on CPU).
    Returns float32 whole numbers in [0, 255].
    """
    image = _round_pixels(_as_float(image))
    channels = image.shape[0]
    pixels = image.reshape(channels, -1).astype(jnp.int32)
    low = pixels.min(axis=1).astype(jnp.float32)[:, None, None]
    high = pixels.max(axis=1).astype(jnp.float32)[:, None, None]
    # Linear ops as ``anchor_out + scale * (x - anchor)``: AutoContrast
    # (low -> 0), Brightness (black anchor), Contrast (PIL's rounded mean luma).
    stretch = params.auto_contrast & (high > low)
    stretch_scale = 255.0 / jnp.maximum(high - low, 1.0)
    scale = jnp.where(stretch, stretch_scale, 1.0) * params.brightness * params.contrast
    mean_luma = jnp.floor(jnp.mean(_pil_grayscale(image)[0]) + 0.5)
    mean_anchor = jnp.where(params.contrast != 1.0, mean_luma, 0.0)
    anchor = jnp.where(stretch, low, 0.0) + mean_anchor
    count_below, step = _equalize_tables(pixels)
    step = step[:, None, None]

    values = _blend(image, params)
    channel_offsets = jnp.arange(channels, dtype=jnp.int32)[:, None, None] * 256
    darker = (
        count_below.reshape(-1)
        .at[values.astype(jnp.int32) + channel_offsets]
        .get(mode="promise_in_bounds")
    )
    equalized = jnp.floor((jnp.floor(step / 2) + darker) / jnp.maximum(step, 1.0))
    equalized = jnp.where(step > 0, jnp.minimum(equalized, 255.0), values)
    linear = _round_pixels(mean_anchor + scale * (values - anchor))
    values = jnp.where(params.equalize, equalized, linear)
    values = jnp.where(values >= params.solarize_threshold, 255.0 - values, values)
    quantum = jnp.exp2(8.0 - jnp.asarray(params.posterize_bits, jnp.float32))
    return jnp.floor(values / quantum) * quantum


@jax.jit
def photometric(image: jax.Array, params: PhotometricParams) -> jax.Array:
    """One photometric op on a ``[H, W, C]`` image, e.g. PIL's ``ImageEnhance.Brightness``
    with factor 1.9 as ``photometric(image, PhotometricParams(brightness=1.9))``: see
    PhotometricParams for the ops and the module docstring for their PIL semantics."""
    channel_first = jnp.moveaxis(_as_float(image), -1, 0)
    return jnp.moveaxis(_photometric_step(channel_first, params), 0, -1)


@jax.jit
def cutout(image: jax.Array, center_y: Any, center_x: Any, size: Any, fill: Any) -> jax.Array:
    """Fills the ``size`` x ``size`` square starting at ``center - size // 2``.

    The square is clipped at the image borders. Returns float32.
    """
    image = _as_float(image)
    height, width, _ = image.shape
    top = center_y - size // 2
    left = center_x - size // 2
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[..., None], jnp.float32(fill), image)


# ------------------------------------------------------------------------------ Views


def _sample_weak_params(
    key: jax.Array, flip: bool, pad: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random (flip, shift_y, shift_x); shifts are uniform in [-pad, pad - 1].

    The official PadandRandomCrop (github salesforce/CoMatch datasets/transform.py:20) draws
    the crop offset with np.random.randint(0, 2 * pad), i.e. 0 .. 2 pad - 1 of the padded
    image: a shift of -pad .. pad - 1 (-4 .. 3 for CIFAR's pad 4).
    """
    flip_key, shift_key = jax.random.split(key)
    do_flip = jax.random.bernoulli(flip_key) if flip else jnp.asarray(False)
    if pad == 0:
        return do_flip, jnp.int32(0), jnp.int32(0)
    shift = jax.random.randint(shift_key, (2,), -pad, pad)
    return do_flip, shift[0], shift[1]


def _weak_one(key: jax.Array, image: jax.Array, *, flip: bool, pad: int) -> jax.Array:
    return _to_uint8(_warp_weak(image, *_sample_weak_params(key, flip, pad)))


def weak_view(
    rng: jax.Array, images: jax.Array, *, flip: bool = True, pad_fraction: float = 0.125
) -> jax.Array:
    """Random horizontal flip (p=0.5) + reflect pad-and-crop by round(pad_fraction*H)."""
    pad = int(round(pad_fraction * images.shape[1]))
    return _batched_view(_weak_one, flip=bool(flip), pad=pad)(rng, images)


def _randaugment_matrix(op: jax.Array, sign: jax.Array, h: int, w: int) -> jax.Array:
    """Inverse affine map of RandAugment op ``op`` (the identity for photometric ops)."""

    def magnitude(op_index: int, value: float) -> jax.Array:
        return jnp.where(op == op_index, sign * value, 0.0)

    return (
        rotate_matrix(magnitude(ROTATE, MAX_ROTATE_DEGREES), h, w)
        @ shear_x_matrix(magnitude(SHEAR_X, MAX_SHEAR))
        @ shear_y_matrix(magnitude(SHEAR_Y, MAX_SHEAR))
        @ translate_matrix(
            magnitude(TRANSLATE_X, TRANSLATE_FRACTION * w),
            magnitude(TRANSLATE_Y, TRANSLATE_FRACTION * h),
        )
    )


def _randaugment_photometric_params(op: jax.Array) -> PhotometricParams:
    """Photometric parameters of RandAugment op ``op`` (the identity for geometric ops)."""

    def factor(op_index: int) -> jax.Array:
        return jnp.where(op == op_index, ENHANCE_FACTOR, 1.0)

    return PhotometricParams(
        auto_contrast=op == AUTO_CONTRAST,
        equalize=op == EQUALIZE,
        solarize_threshold=jnp.where(op == SOLARIZE, SOLARIZE_THRESHOLD, 256),
        posterize_bits=jnp.where(op == POSTERIZE, POSTERIZE_BITS, 8),
        brightness=factor(BRIGHTNESS),
        contrast=factor(CONTRAST),
        color=factor(COLOR),
        sharpness=factor(SHARPNESS),
    )


def _randaugment_warp(image: jax.Array, op: jax.Array, sign: jax.Array, fill: Any) -> jax.Array:
    """The geometric half of a drawn op on a channel-first image (identity if photometric)."""
    _, height, width = image.shape
    return _warp_bilinear(image, _randaugment_matrix(op, sign, height, width), fill)


def _randaugment_one(
    key: jax.Array,
    image: jax.Array,
    *,
    flip: bool,
    pad: int,
    num_ops: int,
    op_prob: float,
    cutout_size: int,
    fill: int,
) -> jax.Array:
    height, width, _ = image.shape
    weak_key, op_key, apply_key, sign_key, cutout_key = jax.random.split(key, 5)
    do_flip, shift_y, shift_x = _sample_weak_params(weak_key, flip, pad)
    ops = jax.random.randint(op_key, (num_ops,), 0, len(RANDAUGMENT_OPS))
    applied = jax.random.uniform(apply_key, (num_ops,)) < op_prob
    ops = jnp.where(applied, ops, IDENTITY)
    signs = jnp.where(jax.random.bernoulli(sign_key, shape=(num_ops,)), 1.0, -1.0)
    fill_value = jnp.float32(fill)

    out = jnp.moveaxis(_as_float(_warp_weak(image, do_flip, shift_y, shift_x)), -1, 0)
    # warp_0, then N scan steps (photometric_i, warp_{i+1}), warp_N the identity.
    if num_ops:
        out = _randaugment_warp(out, ops[0], signs[0], fill_value)
        identity = jnp.full((1,), IDENTITY, ops.dtype)
        warp_ops = jnp.concatenate([ops[1:], identity])
        warp_signs = jnp.concatenate([signs[1:], jnp.ones((1,), signs.dtype)])

        def photometric_then_warp(image: jax.Array, slot: tuple[jax.Array, ...]):
            photometric_op, warp_op, warp_sign = slot
            image = _photometric_step(image, _randaugment_photometric_params(photometric_op))
            return _randaugment_warp(image, warp_op, warp_sign, fill_value), None

        out, _ = jax.lax.scan(photometric_then_warp, out, (ops, warp_ops, warp_signs))
    out = jnp.moveaxis(out, 0, -1)
    centre = jax.random.randint(cutout_key, (2,), 0, jnp.array([height, width]))
    return _to_uint8(cutout(out, centre[0], centre[1], cutout_size, fill))


def randaugment_view(
    rng: jax.Array,
    images: jax.Array,
    *,
    flip: bool = True,
    pad_fraction: float = 0.125,
    num_ops: int = 2,
    op_prob: float = 0.5,
    cutout_fraction: float = 0.5,
    fill: int = 128,
) -> jax.Array:
    """Weak view + ``num_ops`` RandAugment ops (M = 10) in the drawn order + Cutout.

    The official strong view (datasets/cifar.py trans_strong0 with RandomAugment(2, 10)):
    ops are drawn uniformly with replacement from ``RANDAUGMENT_OPS``, each applied with
    probability ``op_prob`` in the drawn order, then a Cutout square of
    round(cutout_fraction * H) pixels (16 on 32 px) filled with ``fill``. See the module
    docstring for the magnitudes and the per-slot design.
    """
    height = images.shape[1]
    view = _batched_view(
        _randaugment_one,
        flip=bool(flip),
        pad=int(round(pad_fraction * height)),
        num_ops=int(num_ops),
        op_prob=float(op_prob),
        cutout_size=int(round(cutout_fraction * height)),
        fill=int(fill),
    )
    return view(rng, images)


def _random_resized_crop_params(
    key: jax.Array,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, crop_h, crop_w).

    All attempts are drawn at once; the first valid one wins, else the
    torchvision centre-crop fallback is used.
    """
    area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
    target_area = (height * width) * jax.random.uniform(
        area_key, (_CROP_ATTEMPTS,), minval=scale[0], maxval=scale[1]
    )
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(jax.random.uniform(ratio_key, (_CROP_ATTEMPTS,), minval=low, maxval=high))
    crop_w = jnp.round(jnp.sqrt(target_area * aspect))
    crop_h = jnp.round(jnp.sqrt(target_area / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = jnp.argmax(fits)

    image_ratio = width / height
    if image_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif image_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height

    any_fits = jnp.any(fits)
    crop_h = jnp.where(any_fits, crop_h[first], fallback_h)
    crop_w = jnp.where(any_fits, crop_w[first], fallback_w)
    top = jnp.where(
        any_fits,
        jnp.floor(jax.random.uniform(top_key) * (height - crop_h + 1)),
        (height - fallback_h) // 2,
    )
    left = jnp.where(
        any_fits,
        jnp.floor(jax.random.uniform(left_key) * (width - crop_w + 1)),
        (width - fallback_w) // 2,
    )
    return top, left, crop_h, crop_w


def _resized_crop(
    image: jax.Array,
    top: jax.Array,
    left: jax.Array,
    crop_h: jax.Array,
    crop_w: jax.Array,
    flip: jax.Array,
) -> jax.Array:
    """Bilinear resize of a crop back to the image size, then optional h-flip.

    Half-pixel (align_corners=False) sampling; the crop never exceeds the image,
    so no antialiasing is needed. Returns float32.
    """
    height, width, _ = image.shape
    out_rows = jnp.arange(height, dtype=jnp.float32)
    out_cols = jnp.arange(width, dtype=jnp.float32)
    out_cols = jnp.where(flip, width - 1 - out_cols, out_cols)
    ys = jnp.clip((out_rows + 0.5) * crop_h / height - 0.5, 0.0, crop_h - 1)
    xs = jnp.clip((out_cols + 0.5) * crop_w / width - 0.5, 0.0, crop_w - 1)
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    y1, x1 = jnp.minimum(y0 + 1, crop_h - 1), jnp.minimum(x0 + 1, crop_w - 1)

    def sample(rows: jax.Array, cols: jax.Array) -> jax.Array:
        rows = (top + rows).astype(jnp.int32)[:, None]
        cols = (left + cols).astype(jnp.int32)[None, :]
        rows, cols = jnp.broadcast_arrays(rows, cols)
        return _as_float(_gather_pixels(image, rows, cols))

    top_row = (1 - wx) * sample(y0, x0) + wx * sample(y0, x1)
    bottom_row = (1 - wx) * sample(y1, x0) + wx * sample(y1, x1)
    return (1 - wy) * top_row + wy * bottom_row


def _color_jitter(
    key: jax.Array,
    image: jax.Array,
    strength: Sequence[float],
    prob: float,
) -> jax.Array:
    """torchvision ``ColorJitter`` in fixed order B, C, S, H on [0, 1] floats.

    Brightness multiplies, contrast/saturation blend with the gray mean / gray
    image (torchvision semantics, unlike dm-pix's TF-style additive brightness
    and per-channel-mean contrast); hue uses ``dm_pix.adjust_hue``. With
    probability ``1 - prob`` all factors are the identity.
    """
    apply_key, b_key, c_key, s_key, h_key = jax.random.split(key, 5)
    apply = jax.random.bernoulli(apply_key, prob)
    b_strength, c_strength, s_strength, h_strength = strength

    def factor(factor_key: jax.Array, amount: float) -> jax.Array:
        value = jax.random.uniform(factor_key, minval=max(0.0, 1.0 - amount), maxval=1.0 + amount)
        return jnp.where(apply, value, 1.0)

    image = jnp.clip(image * factor(b_key, b_strength), 0.0, 1.0)
    luma = dm_pix.rgb_to_grayscale(image, keep_dims=False) if image.shape[-1] == 3 else image
    mean = jnp.mean(luma)  # torchvision's rec601 luma
    image = jnp.clip(mean + factor(c_key, c_strength) * (image - mean), 0.0, 1.0)
    if image.shape[-1] == 3:
        gray = dm_pix.rgb_to_grayscale(image, keep_dims=True)
        image = jnp.clip(gray + factor(s_key, s_strength) * (image - gray), 0.0, 1.0)
        hue_shift = jax.random.uniform(h_key, minval=-h_strength, maxval=h_strength)
        image = dm_pix.adjust_hue(image, jnp.where(apply, hue_shift, 0.0))
    return image


def _simclr_one(
    key: jax.Array,
    image: jax.Array,
    *,
    flip: bool,
    crop_scale: Sequence[float],
    crop_ratio: Sequence[float],
    jitter_strength: Sequence[float],
    jitter_prob: float,
    grayscale_prob: float,
) -> jax.Array:
    height, width, channels = image.shape
    crop_key, flip_key, jitter_key, gray_key = jax.random.split(key, 4)
    top, left, crop_h, crop_w = _random_resized_crop_params(
        crop_key, height, width, crop_scale, crop_ratio
    )
    do_flip = jax.random.bernoulli(flip_key) if flip else jnp.asarray(False)
    out = _resized_crop(image, top, left, crop_h, crop_w, do_flip) / 255.0
    out = _color_jitter(jitter_key, out, jitter_strength, jitter_prob)
    if channels == 3:
        to_gray = jax.random.bernoulli(gray_key, grayscale_prob)
        gray = dm_pix.rgb_to_grayscale(out, keep_dims=True)
        out = jnp.where(to_gray, gray, out)
    return _to_uint8(out * 255.0)


def simclr_view(
    rng: jax.Array,
    images: jax.Array,
    *,
    flip: bool = True,
    crop_scale: Sequence[float] = (0.2, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    jitter_strength: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
    jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
) -> jax.Array:
    """SimCLR view: random resized crop (bilinear), flip, colour jitter, grayscale.

    Area fraction ~ U(crop_scale), aspect ratio log-uniform in crop_ratio
    (torchvision rules). Jitter (brightness, contrast, saturation, hue in that
    fixed order) is applied with probability ``jitter_prob``; grayscale with
    ``grayscale_prob``. For C=1 saturation, hue and grayscale are the identity.
    """
    view = _batched_view(
        _simclr_one,
        flip=bool(flip),
        crop_scale=tuple(map(float, crop_scale)),  # tuples: hashable, one cache entry
        crop_ratio=tuple(map(float, crop_ratio)),
        jitter_strength=tuple(map(float, jitter_strength)),
        jitter_prob=float(jitter_prob),
        grayscale_prob=float(grayscale_prob),
    )
    return view(rng, images)


# View name -> function(rng, images, **its options); 'none' returns the batch as it is.
VIEWS: dict[str, Callable[..., jax.Array]] = {
    "none": lambda rng, images: jnp.asarray(images),
    "weak": weak_view,
    "randaugment": randaugment_view,
    "simclr": simclr_view,
}


def _view_options(view: Callable[..., jax.Array]) -> set[str]:
    parameters = inspect.signature(view).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_view(name: str, rng: jax.Array, images: jax.Array, **options: Any) -> jax.Array:
    """Applies the view ``name`` (a key of ``VIEWS``) to a batch.

    ``options`` may be a union of options for several views: each view gets
    the ones in its signature. An option no view accepts raises TypeError.
    """
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; valid names: {', '.join(VIEWS)}")
    all_options = set().union(*map(_view_options, VIEWS.values()))
    unknown = sorted(set(options) - all_options)
    if unknown:
        raise TypeError(f"unknown view options {unknown}; known: {sorted(all_options)}")
    view = VIEWS[name]
    accepted = _view_options(view)
    return view(rng, images, **{k: v for k, v in options.items() if k in accepted})
