"""Batched image augmentations that run inside a jitted train step.

Every view takes a PRNG key and a batch ``uint8[B, H, W, C]`` (C = 1 or 3) and
returns a batch of the same shape and dtype. The key is split into B keys and a
per-image function is ``jax.vmap``-ed over the batch, so every image draws its
own random parameters. All shapes are static; the views are jittable with their
keyword options held fixed (they are Python values, not traced). Each view is
compiled once per (options, input shape) and cached, so eager calls are fast
too; inside an outer ``jax.jit`` it is simply inlined.

Views
-----
``weak``         random horizontal flip + reflect pad-and-crop (a random
                 integer translation in [-pad, pad] with reflect boundary).
``randaugment``  weak + ``num_ops`` RandAugment ops (FixMatch/CoMatch pool, max
                 magnitude, each applied with probability ``op_prob``) + Cutout.
``simclr``       random resized crop + flip + colour jitter + random grayscale
                 (torchvision semantics, as used by CoMatch's contrastive view).

Speed design
------------
* All geometric ops of a view become ONE gather per image. For RandAugment the
  inverse affine maps of the drawn ops are chained on pixel coordinates (with
  nearest rounding and an out-of-bounds check after each op, so the geometric
  part matches sequential PIL semantics), the result is mapped through the
  weak flip/translation with reflect indexing, and the source image is gathered
  once. Coordinates that left the frame of any op are filled with gray.
* Photometric ops are parameterised instead of switched: each drawn op slot
  runs one shared step whose parameters are the identity for ops that were not
  drawn. The step is a blend ``degenerate + f * (image - degenerate)`` (Color
  with a gray degenerate, Sharpness with a smoothed one; f = 1 otherwise)
  followed by the per-channel lookup-table ops written as per-pixel
  arithmetic: ``anchor_out + scale * (x - anchor)`` (AutoContrast, Brightness,
  Contrast; identity scale 1), one gather into the image's equalisation table
  (Equalize), threshold 256 (Solarize) and 8 bits (Posterize) as identities.
  The op slots run under ``lax.scan`` so that XLA does not fuse (and so
  recompute) one slot's per-pixel work into every consumer in the next slot.
* Approximation: geometric ops are hoisted before the photometric ones (the
  photometric ops then run in their drawn order). Under sequential PIL
  semantics a photometric op drawn before a geometric op would see the image
  before the warp; here it sees the warped image (e.g. AutoContrast statistics
  include the gray fill).

RandAugment magnitudes (all at the maximum magnitude of the FixMatch pool)
-------------------------------------------------------------------------
==============  ==========================================================
op              parameter when drawn and applied
==============  ==========================================================
Identity        --
AutoContrast    per-channel min -> 0, max -> 255 (identity if min == max)
Equalize        per-channel histogram equalisation (PIL ``ImageOps`` rule)
Rotate          +-30 degrees (random sign) about the image centre, gray fill
Solarize        threshold 128: pixels >= 128 become 255 - pixel (the
                FixMatch pool's max, threshold 0, would invert every pixel)
Color           saturation factor 1 +- 0.9 (1.9 or 0.1), gray degenerate
Contrast        factor 1 +- 0.9 around the rounded mean of the luma image
Brightness      factor 1 +- 0.9 (black degenerate)
Sharpness       factor 1 +- 0.9, degenerate = PIL SMOOTH 3x3 kernel
                [[1,1,1],[1,5,1],[1,1,1]] / 13, border pixels unchanged
ShearX          x_in = x_out + s * y_out, s = +-0.3 (about the top-left
                corner, as FixMatch's PIL transform), gray fill
ShearY          y_in = y_out + s * x_out, s = +-0.3, gray fill
TranslateX      +-int(0.3 * W) pixels (FixMatch: int(v * size)), gray fill
TranslateY      +-int(0.3 * H) pixels, gray fill
Posterize       keep the 4 most significant bits
==============  ==========================================================
Cutout: a ``round(cutout_fraction * H)`` square at a uniform random pixel
centre, clipped at the borders, filled with ``fill``. The same gray ``fill``
(default 128) is used for the geometric ops (FixMatch: 128 there, 127 for
Cutout).

Per-image op functions
----------------------
The individual ops operate on ONE image ``[H, W, C]`` given as uint8 or as
float in [0, 255]. They return float32 in [0, 255] holding whole numbers (like
PIL's uint8 output; PIL truncates, these round, so results can differ from
PIL by one gray level). Geometric ops are 3x3 affine
matrices in PIL's convention: they map an OUTPUT point ``(x, y, 1)`` (x =
column, y = row, pixel centres at +0.5) to the INPUT point that is sampled
with nearest-neighbour (``floor``) lookup.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import dm_pix
import jax
import jax.numpy as jnp

VIEW_NAMES = ("none", "weak", "randaugment", "simclr")

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

# Maximum magnitudes (see the table in the module docstring).
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE_FRACTION = 0.3
MAX_ENHANCE_DELTA = 0.9
SOLARIZE_THRESHOLD = 128
POSTERIZE_BITS = 4

# PIL's RGB -> L weights (ITU-R 601-2 luma).
_PIL_LUMA = (0.299, 0.587, 0.114)
# Tries torchvision's RandomResizedCrop makes before its centre-crop fallback.
_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _as_float(image: jax.Array) -> jax.Array:
    """Casts an image to float32 without rescaling."""
    return jnp.asarray(image).astype(jnp.float32)


def _round_pixels(image: jax.Array) -> jax.Array:
    """Rounds and clips to whole numbers in [0, 255], kept as float32."""
    return jnp.clip(jnp.round(image), 0.0, 255.0)


def _to_uint8(image: jax.Array) -> jax.Array:
    """Rounds, clips and casts to uint8."""
    return _round_pixels(image).astype(jnp.uint8)


def _float_tuple(values: Sequence[float], length: int) -> tuple[float, ...]:
    """Hashable option tuple; checks its length."""
    values = tuple(float(v) for v in values)
    if len(values) != length:
        raise ValueError(f"expected {length} values, got {values}")
    return values


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C], got shape {images.shape}")


@functools.lru_cache(maxsize=None)
def _batched_view(per_image: Callable[..., jax.Array], **options: Any) -> Callable:
    """``jit(vmap(per_image))`` with one key per image, cached per static options.

    Caching makes eager calls fast; inside an outer jit it is simply inlined.
    """
    per_image = functools.partial(per_image, **options)

    @jax.jit
    def view(rng: jax.Array, images: jax.Array) -> jax.Array:
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


# ---------------------------------------------------------------------------
# Geometric ops: 3x3 inverse affine matrices (PIL convention) and warping
# ---------------------------------------------------------------------------


def _matrix(a: Any, b: Any, c: Any, d: Any, e: Any, f: Any) -> jax.Array:
    entries = [jnp.asarray(v, jnp.float32) for v in (a, b, c, d, e, f, 0.0, 0.0, 1.0)]
    return jnp.stack(entries).reshape(3, 3)


def rotate_matrix(degrees: Any, h: int, w: int) -> jax.Array:
    """PIL ``Image.rotate(degrees)``: counter-clockwise about the centre (w/2, h/2)."""
    theta = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    centre_x, centre_y = w / 2.0, h / 2.0
    return _matrix(
        cos,
        sin,
        centre_x - cos * centre_x - sin * centre_y,
        -sin,
        cos,
        centre_y + sin * centre_x - cos * centre_y,
    )


def shear_x_matrix(s: Any) -> jax.Array:
    """PIL affine ``(1, s, 0, 0, 1, 0)``: x_in = x_out + s * y_out."""
    return _matrix(1.0, s, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(s: Any) -> jax.Array:
    """PIL affine ``(1, 0, 0, s, 1, 0)``: y_in = s * x_out + y_out."""
    return _matrix(1.0, 0.0, 0.0, s, 1.0, 0.0)


def translate_matrix(tx: Any, ty: Any) -> jax.Array:
    """PIL affine ``(1, 0, tx, 0, 1, ty)``: output(x, y) = input(x + tx, y + ty)."""
    return _matrix(1.0, 0.0, tx, 0.0, 1.0, ty)


def _pixel_centres(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Float (x, y) maps of the output pixel centres, each ``[H, W]``."""
    xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
    ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
    return (
        jnp.broadcast_to(xs, (height, width)),
        jnp.broadcast_to(ys, (height, width)),
    )


def _inverse_map_step(
    xs: jax.Array,
    ys: jax.Array,
    valid: jax.Array,
    matrix: jax.Array,
    height: int,
    width: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Maps pixel centres through one inverse affine with nearest rounding.

    Returns the centres of the sampled input pixels and the updated validity
    (False where the point fell outside the input frame).
    """
    x_in = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    y_in = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    cols, rows = jnp.floor(x_in), jnp.floor(y_in)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return cols + 0.5, rows + 0.5, valid & inside


def _chain_inverse_maps(
    matrices: Sequence[jax.Array], height: int, width: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Integer (rows, cols, valid) maps for ops applied in the order ``matrices``."""
    xs, ys = _pixel_centres(height, width)
    valid = jnp.ones((height, width), bool)
    for matrix in reversed(matrices):  # the last op is inverted first
        xs, ys, valid = _inverse_map_step(xs, ys, valid, matrix, height, width)
    rows = jnp.where(valid, jnp.floor(ys).astype(jnp.int32), 0)
    cols = jnp.where(valid, jnp.floor(xs).astype(jnp.int32), 0)
    return rows, cols, valid


@jax.jit
def warp(image: jax.Array, matrix: jax.Array, fill: Any) -> jax.Array:
    """PIL-style affine transform with nearest sampling; outside -> ``fill``.

    ``matrix`` maps output coordinates to input coordinates (see module doc).
    Returns float32 in [0, 255].
    """
    image = _as_float(image)
    height, width, _ = image.shape
    rows, cols, valid = _chain_inverse_maps([matrix], height, width)
    sampled = _gather_pixels(image, rows, cols)
    return jnp.where(valid[..., None], sampled, jnp.float32(fill))


def _weak_source_indices(
    rows: jax.Array,
    cols: jax.Array,
    flip: jax.Array,
    shift_y: jax.Array,
    shift_x: jax.Array,
    height: int,
    width: int,
) -> tuple[jax.Array, jax.Array]:
    """Source indices of flip-then-(reflect pad + crop) for output indices.

    The crop offset in the padded image is ``pad + shift``, i.e. output pixel
    (r, c) of the crop is pixel (r + shift_y, c + shift_x) of the flipped image
    with reflect boundary.
    """
    source_rows = reflect_index(rows + shift_y, height)
    source_cols = reflect_index(cols + shift_x, width)
    source_cols = jnp.where(flip, width - 1 - source_cols, source_cols)
    return source_rows, source_cols


def _warp_weak(
    image: jax.Array,
    flip: jax.Array,
    shift_y: jax.Array,
    shift_x: jax.Array,
    matrices: Sequence[jax.Array] = (),
    fill: Any = 0,
) -> jax.Array:
    """Flip + reflect translation, then the affine ops ``matrices``: ONE gather.

    Without matrices this returns the input dtype; with matrices float32.
    """
    height, width, _ = image.shape
    if matrices:
        rows, cols, valid = _chain_inverse_maps(matrices, height, width)
    else:
        rows = jnp.broadcast_to(jnp.arange(height)[:, None], (height, width))
        cols = jnp.broadcast_to(jnp.arange(width)[None, :], (height, width))
        valid = None
    source_rows, source_cols = _weak_source_indices(
        rows, cols, flip, shift_y, shift_x, height, width
    )
    sampled = _gather_pixels(image, source_rows, source_cols)
    if valid is None:
        return sampled
    return jnp.where(valid[..., None], _as_float(sampled), jnp.float32(fill))


# ---------------------------------------------------------------------------
# Photometric ops: one shared, parameterised step (blend + LUT-type ops)
# ---------------------------------------------------------------------------


class PhotometricParams(NamedTuple):
    """Parameters of one photometric step; the defaults are the identity.

    At most one op should be non-identity per step (that is how RandAugment
    uses it); the step is not meant to compose several ops.
    """

    auto_contrast: Any = False
    equalize: Any = False
    solarize_threshold: Any = 256  # pixels >= threshold are inverted
    posterize_bits: Any = 8  # most significant bits kept
    brightness: Any = 1.0
    contrast: Any = 1.0
    color: Any = 1.0
    sharpness: Any = 1.0


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


def _apply_photometric(image: jax.Array, params: PhotometricParams) -> jax.Array:
    """``_photometric_step`` for a channel-last ``[H, W, C]`` image."""
    channel_first = jnp.moveaxis(_as_float(image), -1, 0)
    return jnp.moveaxis(_photometric_step(channel_first, params), 0, -1)


@jax.jit
def auto_contrast(image: jax.Array) -> jax.Array:
    """Per-channel linear stretch of [min, max] to [0, 255] (PIL autocontrast)."""
    return _apply_photometric(image, PhotometricParams(auto_contrast=True))


@jax.jit
def equalize(image: jax.Array) -> jax.Array:
    """Per-channel histogram equalisation (PIL ``ImageOps.equalize``)."""
    return _apply_photometric(image, PhotometricParams(equalize=True))


@jax.jit
def solarize(image: jax.Array, threshold: Any) -> jax.Array:
    """Inverts pixels >= ``threshold``; 256 is the identity."""
    return _apply_photometric(image, PhotometricParams(solarize_threshold=threshold))


@jax.jit
def posterize(image: jax.Array, bits: Any) -> jax.Array:
    """Keeps the ``bits`` most significant bits of every pixel."""
    return _apply_photometric(image, PhotometricParams(posterize_bits=bits))


@jax.jit
def color(image: jax.Array, factor: Any) -> jax.Array:
    """PIL ``ImageEnhance.Color``: blend with the grayscale image (C=1: identity)."""
    return _apply_photometric(image, PhotometricParams(color=factor))


@jax.jit
def contrast(image: jax.Array, factor: Any) -> jax.Array:
    """PIL ``ImageEnhance.Contrast``: blend with the rounded mean luma level."""
    return _apply_photometric(image, PhotometricParams(contrast=factor))


@jax.jit
def brightness(image: jax.Array, factor: Any) -> jax.Array:
    """PIL ``ImageEnhance.Brightness``: blend with black (scale by ``factor``)."""
    return _apply_photometric(image, PhotometricParams(brightness=factor))


@jax.jit
def sharpness(image: jax.Array, factor: Any) -> jax.Array:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image."""
    return _apply_photometric(image, PhotometricParams(sharpness=factor))


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


# ---------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------


def _sample_weak_params(
    key: jax.Array, flip: bool, pad: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random (flip, shift_y, shift_x); shifts are uniform in [-pad, pad]."""
    flip_key, shift_key = jax.random.split(key)
    do_flip = jax.random.bernoulli(flip_key) if flip else jnp.asarray(False)
    shift = jax.random.randint(shift_key, (2,), -pad, pad + 1)
    return do_flip, shift[0], shift[1]


def _weak_one(key: jax.Array, image: jax.Array, *, flip: bool, pad: int) -> jax.Array:
    return _to_uint8(_warp_weak(image, *_sample_weak_params(key, flip, pad)))


def weak_view(
    rng: jax.Array, images: jax.Array, *, flip: bool = True, pad_fraction: float = 0.125
) -> jax.Array:
    """Random horizontal flip (p=0.5) + reflect pad-and-crop by round(pad_fraction*H)."""
    _check_images(images)
    pad = int(round(pad_fraction * images.shape[1]))
    return _batched_view(_weak_one, flip=bool(flip), pad=pad)(rng, images)


def _randaugment_matrix(op: jax.Array, sign: jax.Array, h: int, w: int) -> jax.Array:
    """Inverse affine of RandAugment op ``op`` (identity for photometric ops)."""

    def magnitude(op_index: int, value: float) -> jax.Array:
        return jnp.where(op == op_index, sign * value, 0.0)

    return (
        rotate_matrix(magnitude(ROTATE, MAX_ROTATE_DEGREES), h, w)
        @ shear_x_matrix(magnitude(SHEAR_X, MAX_SHEAR))
        @ shear_y_matrix(magnitude(SHEAR_Y, MAX_SHEAR))
        @ translate_matrix(
            magnitude(TRANSLATE_X, int(MAX_TRANSLATE_FRACTION * w)),
            magnitude(TRANSLATE_Y, int(MAX_TRANSLATE_FRACTION * h)),
        )
    )


def _randaugment_photometric_params(op: jax.Array, sign: jax.Array) -> PhotometricParams:
    """Photometric parameters of RandAugment op ``op`` (identity for geometric)."""
    enhance = 1.0 + MAX_ENHANCE_DELTA * sign

    def factor(op_index: int) -> jax.Array:
        return jnp.where(op == op_index, enhance, 1.0)

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

    matrices = [_randaugment_matrix(ops[i], signs[i], height, width) for i in range(num_ops)]
    out = _as_float(_warp_weak(image, do_flip, shift_y, shift_x, matrices, fill))

    def apply_op(image: jax.Array, op_and_sign: tuple[jax.Array, jax.Array]):
        params = _randaugment_photometric_params(*op_and_sign)
        return _photometric_step(image, params), None

    # A scan, not a Python loop: see "Speed design" in the module docstring.
    out, _ = jax.lax.scan(apply_op, jnp.moveaxis(out, -1, 0), (ops, signs))
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
    """Weak view + ``num_ops`` RandAugment ops (max magnitude) + Cutout.

    Ops are drawn uniformly with replacement from ``RANDAUGMENT_OPS`` and each
    is applied with probability ``op_prob``; see the module docstring for the
    magnitudes and for the one-warp / hoisted-geometry design.
    """
    _check_images(images)
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
    aspect = jnp.exp(
        jax.random.uniform(
            ratio_key,
            (_CROP_ATTEMPTS,),
            minval=math.log(ratio[0]),
            maxval=math.log(ratio[1]),
        )
    )
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


def _luma(image: jax.Array) -> jax.Array:
    """torchvision/dm-pix rec601 luma ``[H, W, 1]`` (the image itself for C=1)."""
    if image.shape[-1] == 3:
        return dm_pix.rgb_to_grayscale(image, keep_dims=False)
    return image


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
    mean = jnp.mean(_luma(image))
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
    _check_images(images)
    view = _batched_view(
        _simclr_one,
        flip=bool(flip),
        crop_scale=_float_tuple(crop_scale, 2),
        crop_ratio=_float_tuple(crop_ratio, 2),
        jitter_strength=_float_tuple(jitter_strength, 4),
        jitter_prob=float(jitter_prob),
        grayscale_prob=float(grayscale_prob),
    )
    return view(rng, images)


_VIEW_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "weak": weak_view,
    "randaugment": randaugment_view,
    "simclr": simclr_view,
}


def _view_options(view: Callable[..., jax.Array]) -> set[str]:
    parameters = inspect.signature(view).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_view(name: str, rng: jax.Array, images: jax.Array, **options: Any) -> jax.Array:
    """Applies the view ``name`` (one of ``VIEW_NAMES``) to a batch.

    ``options`` may be a union of options for several views: each view gets
    the ones in its signature. An option no view accepts raises TypeError.
    """
    if name not in VIEW_NAMES:
        raise ValueError(f"unknown view {name!r}; valid names: {', '.join(VIEW_NAMES)}")
    all_options = set().union(*map(_view_options, _VIEW_FUNCTIONS.values()))
    unknown = sorted(set(options) - all_options)
    if unknown:
        raise TypeError(f"unknown view options {unknown}; known: {sorted(all_options)}")
    if name == "none":
        return jnp.asarray(images)
    view = _VIEW_FUNCTIONS[name]
    accepted = _view_options(view)
    return view(rng, images, **{k: v for k, v in options.items() if k in accepted})
