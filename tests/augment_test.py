"""Tests for comatch_jax.core.augment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax.core import augment

VIEWS = {
    "weak": augment.weak_view,
    "randaugment": augment.randaugment_view,
    "simclr": augment.simclr_view,
}


def photometric(image, **params):
    """One photometric op, e.g. photometric(image, brightness=1.9)."""
    return augment.photometric(image, augment.PhotometricParams(**params))


# Views compile once per (options, shape); tests reuse these shapes to stay fast.
GRAY_BATCH = (2, 8, 8, 1)
COLOR_BATCH = (3, 12, 10, 3)


def random_images(shape, seed=0, low=0, high=256):
    return np.random.RandomState(seed).randint(low, high, shape).astype(np.uint8)


def gradient_image(height, width, channels):
    """Distinct, fill-free pixel values that encode their position."""
    rows = np.arange(height)[:, None, None]
    cols = np.arange(width)[None, :, None]
    chans = np.arange(channels)[None, None, :]
    return (1 + rows * width + cols + 3 * chans).astype(np.uint8)


def reference_affine(image, matrix, fill):
    """NumPy cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT): pixel centres at integers, the
    inverse map ``matrix`` (output -> input), coordinates rounded to 1/32 px, bilinear from
    4 neighbours, outside -> fill, rounded. float32 arithmetic, so that ties at x.5 round as in the JAX version.
    """
    height, width, _ = image.shape
    f32 = np.float32
    matrix = np.asarray(matrix, f32)
    image = image.astype(f32)
    out = np.empty_like(image)

    def pixel(row, col):
        inside = 0 <= row < height and 0 <= col < width
        return image[row, col] if inside else np.full(image.shape[-1], f32(fill))

    for y in range(height):
        for x in range(width):
            x_in = matrix[0, 0] * f32(x) + matrix[0, 1] * f32(y) + matrix[0, 2]
            y_in = matrix[1, 0] * f32(x) + matrix[1, 1] * f32(y) + matrix[1, 2]
            x_in, y_in = np.round(x_in * 32) / f32(32), np.round(y_in * 32) / f32(32)  # cv2
            col, row = int(np.floor(x_in)), int(np.floor(y_in))
            wx, wy = x_in - f32(col), y_in - f32(row)
            one = f32(1)
            top = (one - wx) * pixel(row, col) + wx * pixel(row, col + 1)
            bottom = (one - wx) * pixel(row + 1, col) + wx * pixel(row + 1, col + 1)
            out[y, x] = (one - wy) * top + wy * bottom
    return np.clip(np.round(out), 0, 255)


def assert_warp_close(actual, expected):
    """Bilinear: equal but for float32-vs-float64 ties at x.5 (one gray level, rare)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, atol=1)
    assert np.mean(actual != expected) < 0.05


def assert_close_pixels(actual, expected, atol=0, err_msg=""):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(expected, np.float64),
        atol=atol,
        err_msg=err_msg,
    )


# ---------------------------------------------------------------------------
# Views: shape, dtype, determinism, per-image randomness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("shape", [GRAY_BATCH, COLOR_BATCH])
def test_view_keeps_shape_dtype_and_range(name, shape):
    images = random_images(shape)
    out = VIEWS[name](jax.random.PRNGKey(0), images)
    assert out.shape == shape
    assert out.dtype == jnp.uint8
    out = np.asarray(out)
    assert 0 <= out.min() <= out.max() <= 255
    assert out.std() > 0


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_view_is_deterministic_per_key(name):
    images = random_images(COLOR_BATCH)
    view = VIEWS[name]
    first = view(jax.random.PRNGKey(1), images)
    again = view(jax.random.PRNGKey(1), images)
    other = view(jax.random.PRNGKey(2), images)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_view_draws_parameters_per_image(name):
    images = np.repeat(random_images((1,) + COLOR_BATCH[1:]), COLOR_BATCH[0], axis=0)
    out = np.asarray(VIEWS[name](jax.random.PRNGKey(3), images))
    distinct = {out[i].tobytes() for i in range(len(out))}
    assert len(distinct) > 1


def test_view_accepts_new_style_keys():
    images = random_images(GRAY_BATCH)
    out = augment.weak_view(jax.random.key(0), images)
    assert out.shape == images.shape


# ---------------------------------------------------------------------------
# Weak view: flip + reflect pad-and-crop
# ---------------------------------------------------------------------------


def test_weak_without_flip_and_pad_is_identity():
    images = random_images((4, 8, 8, 3))
    out = augment.weak_view(jax.random.PRNGKey(0), images, flip=False, pad_fraction=0.0)
    np.testing.assert_array_equal(out, images)


def test_horizontal_flip_of_gradient_equals_np_flip():
    image = gradient_image(8, 8, 3)
    out = augment._warp_weak(jnp.asarray(image), jnp.asarray(True), 0, 0)
    np.testing.assert_array_equal(out, np.flip(image, axis=1))


def test_weak_flip_only_gives_image_or_its_mirror():
    images = np.repeat(gradient_image(8, 8, 1)[None], 16, axis=0)
    out = np.asarray(augment.weak_view(jax.random.PRNGKey(0), images, pad_fraction=0.0))
    flipped = [np.array_equal(o, np.flip(images[0], axis=1)) for o in out]
    same = [np.array_equal(o, images[0]) for o in out]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def test_reflect_index_matches_numpy_reflect_padding():
    size = 5
    index = np.arange(-12, 17)
    padded = np.pad(np.arange(size), 12, mode="reflect")
    np.testing.assert_array_equal(augment.reflect_index(jnp.asarray(index), size), padded)
    np.testing.assert_array_equal(augment.reflect_index(jnp.arange(-3, 3), 1), 0)


@pytest.mark.parametrize("flip", [False, True])
def test_weak_translation_uses_reflected_pixels(flip):
    # Official order: reflect pad, crop at offset pad + shift, then flip.
    pad = 3
    image = gradient_image(8, 8, 2)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for shift_y in range(-pad, pad):
        for shift_x in range(-pad, pad):
            out = augment._warp_weak(jnp.asarray(image), jnp.asarray(flip), shift_y, shift_x)
            top, left = pad + shift_y, pad + shift_x
            crop = padded[top : top + 8, left : left + 8]
            np.testing.assert_array_equal(out, np.flip(crop, axis=1) if flip else crop)


def test_weak_view_outputs_are_reflect_padded_crops():
    pad = 2  # round(0.25 * 8)
    image = gradient_image(8, 8, 1)
    candidates = set()
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for top in range(2 * pad):  # official offsets 0 .. 2 pad - 1
        for left in range(2 * pad):
            crop = padded[top : top + 8, left : left + 8]
            candidates.add(crop.tobytes())
            candidates.add(np.flip(crop, axis=1).tobytes())
    images = np.repeat(image[None], 32, axis=0)
    out = np.asarray(augment.weak_view(jax.random.PRNGKey(0), images, pad_fraction=0.25))
    produced = {o.tobytes() for o in out}
    assert produced <= candidates
    assert len(produced) > 8


def test_weak_shift_range_is_the_official_minus_4_to_3():
    # datasets/transform.py: np.random.randint(0, 8) on the 4-padded 32 px image.
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    flips, ys, xs = jax.vmap(lambda k: augment._sample_weak_params(k, True, 4))(keys)
    for shifts in (ys, xs):
        values, counts = np.unique(np.asarray(shifts), return_counts=True)
        np.testing.assert_array_equal(values, np.arange(-4, 4))
        assert counts.min() > 400  # uniform: 500 expected each
    assert 0.45 < np.mean(flips) < 0.55


# ---------------------------------------------------------------------------
# Geometric ops
# ---------------------------------------------------------------------------


def test_rotate_90_is_counter_clockwise_about_the_official_centre():
    # cv2.getRotationMatrix2D((w/2, h/2), 90, 1) with integer pixel centres: np.rot90
    # about (4, 4) instead of (3.5, 3.5), i.e. shifted by one pixel with fill entering.
    image = gradient_image(8, 8, 3)
    out = np.asarray(augment.warp(image, augment.rotate_matrix(90.0, 8, 8), 0))
    np.testing.assert_array_equal(out[1:], np.rot90(image)[:-1])
    np.testing.assert_array_equal(out[0], 0)
    out = np.asarray(augment.warp(image, augment.rotate_matrix(-90.0, 8, 8), 0))
    np.testing.assert_array_equal(out[:, 1:], np.rot90(image, k=-1)[:, :-1])
    np.testing.assert_array_equal(out[:, 0], 0)


@pytest.mark.parametrize("degrees", [30.0, -30.0, 17.0])
def test_rotate_matches_numpy_reference(degrees):
    image = gradient_image(10, 12, 1)
    matrix = augment.rotate_matrix(degrees, 10, 12)
    out = augment.warp(image, matrix, 128)
    assert_warp_close(out, reference_affine(image, matrix, 128))
    # Bilinear: values between pixel values, not only copies of them.
    assert not set(np.unique(np.asarray(out))) <= set(np.unique(image)) | {128.0}


@pytest.mark.parametrize("tx, ty", [(3, 0), (-2, 0), (0, 4), (2, -3)])
def test_translate_matches_shift_with_fill(tx, ty):
    image = gradient_image(8, 8, 3)
    expected = np.full_like(image, 128)
    # output(x, y) = input(x + tx, y + ty)
    src = image[max(ty, 0) : 8 + min(ty, 0), max(tx, 0) : 8 + min(tx, 0)]
    expected[max(-ty, 0) : 8 + min(-ty, 0), max(-tx, 0) : 8 + min(-tx, 0)] = src
    out = augment.warp(image, augment.translate_matrix(tx, ty), 128)
    np.testing.assert_array_equal(out, expected)


def test_subpixel_translate_blends_with_the_fill_at_the_border():
    image = np.full((4, 4, 1), 100, np.uint8)
    out = np.asarray(augment.warp(image, augment.translate_matrix(0.5, 0.0), 128))[..., 0]
    np.testing.assert_array_equal(out[:, :3], 100)
    np.testing.assert_array_equal(out[:, 3], 114)  # (100 + 128) / 2


@pytest.mark.parametrize(
    "matrix_fn", [augment.shear_x_matrix, augment.shear_y_matrix], ids=["x", "y"]
)
@pytest.mark.parametrize("amount", [0.3, -0.3])
def test_shear_matches_numpy_reference(matrix_fn, amount):
    image = np.full((8, 8, 1), 77, np.uint8)
    out = np.asarray(augment.warp(image, matrix_fn(amount), 128))
    assert (out == 77).sum() > 32
    assert_warp_close(out, reference_affine(image, matrix_fn(amount), 128))
    gradient = gradient_image(8, 8, 1)
    assert_warp_close(
        augment.warp(gradient, matrix_fn(amount), 128),
        reference_affine(gradient, matrix_fn(amount), 128),
    )


def test_shear_x_is_the_official_forward_matrix_inverted():
    # Official shear_x_func: cv2.warpAffine(img, [[1, s, 0], [0, 1, 0]]) sends input (x, y)
    # to output (x + s y, y): a pixel at row 5, column 1 lands at column 1 + 0.4 * 5 = 3.
    image = np.zeros((8, 8, 1), np.uint8)
    image[5, 1] = 200
    out = np.asarray(augment.warp(image, augment.shear_x_matrix(0.4), 0))[..., 0]
    assert out[5, 3] == 200 and out[5, 1] == 0


# ---------------------------------------------------------------------------
# Photometric ops vs NumPy references
# ---------------------------------------------------------------------------


def numpy_luma(image):
    image = image.astype(np.float64)
    if image.shape[-1] != 3:
        return image[..., 0]
    return np.round(image @ np.array([0.299, 0.587, 0.114]))


@pytest.mark.parametrize("threshold", [0, 100, 128, 256])
def test_solarize_inverts_pixels_at_or_above_threshold(threshold):
    image = random_images((8, 8, 3))
    expected = np.where(image >= threshold, 255 - image, image)
    assert_close_pixels(photometric(image, solarize_threshold=threshold), expected)


@pytest.mark.parametrize("bits", [1, 4, 7, 8])
def test_posterize_keeps_high_bits(bits):
    image = random_images((8, 8, 3))
    mask = (0xFF << (8 - bits)) & 0xFF
    assert_close_pixels(photometric(image, posterize_bits=bits), image & mask)


@pytest.mark.parametrize("channels", [1, 3])
def test_auto_contrast_stretches_each_channel(channels):
    image = random_images((8, 8, channels), low=40, high=180)
    out = np.asarray(photometric(image, auto_contrast=True))
    lo = image.min(axis=(0, 1)).astype(np.float64)
    hi = image.max(axis=(0, 1)).astype(np.float64)
    expected = np.round((image - lo) * 255.0 / (hi - lo))
    # float32 may round exact .5 cases the other way.
    assert_close_pixels(out, expected, atol=1)
    assert np.mean(out == expected) > 0.9
    np.testing.assert_array_equal(out.min(axis=(0, 1)), 0)
    np.testing.assert_array_equal(out.max(axis=(0, 1)), 255)


def test_auto_contrast_keeps_constant_channel():
    image = random_images((8, 8, 3), low=40, high=180)
    image[..., 1] = 99
    out = np.asarray(photometric(image, auto_contrast=True))
    np.testing.assert_array_equal(out[..., 1], 99)


def numpy_equalize(image):
    """PIL ImageOps.equalize, per channel."""
    out = np.empty(image.shape, np.float64)
    for c in range(image.shape[-1]):
        histogram = np.bincount(image[..., c].ravel(), minlength=256)
        nonzero = histogram[histogram > 0]
        step = (nonzero.sum() - nonzero[-1]) // 256
        if len(nonzero) <= 1 or step == 0:
            lut = np.arange(256)
        else:
            count_below = np.cumsum(histogram) - histogram
            lut = np.minimum((step // 2 + count_below) // step, 255)
        out[..., c] = lut[image[..., c]]
    return out


def test_equalize_of_flat_histogram_is_unchanged():
    image = np.random.RandomState(0).permutation(256).reshape(16, 16, 1)
    image = image.astype(np.uint8)
    assert_close_pixels(photometric(image, equalize=True), image)


def test_equalize_of_two_valued_image_maps_to_extremes():
    image = np.full((32, 32, 1), 50, np.uint8)
    image[:16] = 200
    out = np.asarray(photometric(image, equalize=True))
    np.testing.assert_array_equal(out[16:], 0)
    np.testing.assert_array_equal(out[:16], 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_equalize_matches_numpy_reference(channels):
    image = random_images((32, 32, channels), low=60, high=140)
    assert_close_pixels(photometric(image, equalize=True), numpy_equalize(image))


@pytest.mark.parametrize("channels", [1, 3])
def test_brightness(channels):
    image = random_images((8, 8, channels))
    assert_close_pixels(photometric(image, brightness=0.0), 0)
    assert_close_pixels(photometric(image, brightness=1.0), image)
    expected = np.clip(np.round(image * 1.9), 0, 255)
    assert_close_pixels(photometric(image, brightness=1.9), expected, atol=1)


@pytest.mark.parametrize("factor", [0.1, 1.0, 1.9])
@pytest.mark.parametrize("channels", [1, 3])
def test_contrast(factor, channels):
    image = random_images((8, 8, channels))
    mean = np.floor(numpy_luma(image).mean() + 0.5)
    expected = np.clip(np.round(mean + factor * (image - mean)), 0, 255)
    out = photometric(image, contrast=factor)
    assert_close_pixels(out, expected, atol=0 if factor == 1.0 else 1)


@pytest.mark.parametrize("factor", [0.1, 1.0, 1.9])
def test_color(factor):
    image = random_images((8, 8, 3))
    gray = numpy_luma(image)[..., None]
    expected = np.clip(np.round(gray + factor * (image - gray)), 0, 255)
    assert_close_pixels(photometric(image, color=factor), expected, atol=0 if factor == 1.0 else 1)
    assert_close_pixels(photometric(image[..., :1], color=factor), image[..., :1])


def numpy_smooth(image):
    image = image.astype(np.float64)
    out = image.copy()
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
    for y in range(1, image.shape[0] - 1):
        for x in range(1, image.shape[1] - 1):
            window = image[y - 1 : y + 2, x - 1 : x + 2]
            out[y, x] = np.round(np.tensordot(kernel, window, axes=2))
    return out


@pytest.mark.parametrize("factor", [0.0, 1.0, 1.9])
def test_sharpness(factor):
    image = random_images((8, 8, 3))
    smooth = numpy_smooth(image)
    expected = np.clip(np.round(smooth + factor * (image - smooth)), 0, 255)
    out = photometric(image, sharpness=factor)
    assert_close_pixels(out, expected, atol=0 if factor in (0.0, 1.0) else 1)
    # Borders are never changed.
    np.testing.assert_array_equal(np.asarray(out)[0], image[0])
    np.testing.assert_array_equal(np.asarray(out)[:, -1], image[:, -1])


def test_cutout_fills_exact_square_inside_and_clips_at_border():
    image = random_images((16, 16, 3), low=0, high=100)
    out = np.asarray(augment.cutout(image, 8, 7, 6, 128))
    filled = np.all(out == 128, axis=-1)
    assert filled.sum() == 36
    assert filled[5:11, 4:10].all()
    np.testing.assert_array_equal(out[~filled], image[~filled])
    corner = np.all(np.asarray(augment.cutout(image, 0, 15, 6, 128)) == 128, axis=-1)
    assert corner.sum() == 3 * 4
    assert corner[:3, 12:].all()


@pytest.mark.parametrize("channels", [1, 3])
def test_ops_agree_with_pil_within_rounding(channels):
    pytest.importorskip("PIL", reason="PIL not installed")
    from PIL import Image, ImageEnhance, ImageOps

    image = random_images((12, 10, channels), seed=channels)

    def to_pil(array):
        return Image.fromarray(array[..., 0] if channels == 1 else array)

    def from_pil(pil_image):
        return np.asarray(pil_image).reshape(12, 10, channels)

    exact = {
        "solarize": (photometric(image, solarize_threshold=128), ImageOps.solarize(to_pil(image))),
        "posterize": (
            photometric(image, posterize_bits=4),
            ImageOps.posterize(to_pil(image), 4),
        ),
        "equalize": (photometric(image, equalize=True), ImageOps.equalize(to_pil(image))),
    }
    for name, (ours, theirs) in exact.items():
        assert_close_pixels(ours, from_pil(theirs), err_msg=name)
    # PIL truncates where we round: at most one gray level apart.
    approximate = {
        "auto_contrast": (photometric(image, auto_contrast=True), ImageOps.autocontrast),
        "color": (
            photometric(image, color=1.9),
            lambda p: ImageEnhance.Color(p).enhance(1.9),
        ),
        "contrast": (
            photometric(image, contrast=0.1),
            lambda p: ImageEnhance.Contrast(p).enhance(0.1),
        ),
        "brightness": (
            photometric(image, brightness=1.9),
            lambda p: ImageEnhance.Brightness(p).enhance(1.9),
        ),
        "sharpness": (
            photometric(image, sharpness=1.9),
            lambda p: ImageEnhance.Sharpness(p).enhance(1.9),
        ),
    }
    for name, (ours, pil_op) in approximate.items():
        assert_close_pixels(ours, from_pil(pil_op(to_pil(image))), 1, name)


# ---------------------------------------------------------------------------
# RandAugment internals
# ---------------------------------------------------------------------------


def test_randaugment_magnitudes_are_the_official_m10():
    # datasets/randaugment.py arg_dict at MAX_LEVEL = M = 10, translate_const = 10.
    assert augment.MAX_ROTATE_DEGREES == 30.0
    assert augment.MAX_SHEAR == 0.3
    assert augment.TRANSLATE_FRACTION * 32 == 10.0
    assert augment.ENHANCE_FACTOR == pytest.approx(10 / 10 * 1.8 + 0.1)
    assert augment.SOLARIZE_THRESHOLD == int(10 / 10 * 256) == 256
    assert augment.POSTERIZE_BITS == int(10 / 10 * 4) == 4
    assert len(augment.RANDAUGMENT_OPS) == 14
    # Solarize at 256 is the identity (official: a no-op at M = 10).
    image = random_images((6, 5, 3))
    np.testing.assert_array_equal(photometric(image, solarize_threshold=256), image)


def test_randaugment_op_table():
    h, w = 16, 12
    for sign in (-1.0, 1.0):
        expected_matrices = {
            augment.ROTATE: augment.rotate_matrix(sign * 30.0, h, w),
            augment.SHEAR_X: augment.shear_x_matrix(sign * 0.3),
            augment.SHEAR_Y: augment.shear_y_matrix(sign * 0.3),
            augment.TRANSLATE_X: augment.translate_matrix(sign * 10 / 32 * w, 0),
            augment.TRANSLATE_Y: augment.translate_matrix(0, sign * 10 / 32 * h),
        }
        for op in range(len(augment.RANDAUGMENT_OPS)):
            matrix = augment._randaugment_matrix(jnp.int32(op), jnp.float32(sign), h, w)
            np.testing.assert_allclose(matrix, expected_matrices.get(op, np.eye(3)), atol=1e-6)
    identity = augment.PhotometricParams()
    expected_params = {  # no random sign: the factor is always 1.9
        augment.AUTO_CONTRAST: identity._replace(auto_contrast=True),
        augment.EQUALIZE: identity._replace(equalize=True),
        augment.SOLARIZE: identity._replace(solarize_threshold=256),
        augment.POSTERIZE: identity._replace(posterize_bits=4),
        augment.COLOR: identity._replace(color=1.9),
        augment.CONTRAST: identity._replace(contrast=1.9),
        augment.BRIGHTNESS: identity._replace(brightness=1.9),
        augment.SHARPNESS: identity._replace(sharpness=1.9),
    }
    for op in range(len(augment.RANDAUGMENT_OPS)):
        params = augment._randaugment_photometric_params(jnp.int32(op))
        for field, value in zip(params._fields, expected_params.get(op, identity)):
            np.testing.assert_allclose(
                np.asarray(getattr(params, field), np.float64), value, atol=1e-6
            )


def _reference_randaugment(key, image, pad, op_prob, cutout_size, fill):
    """The view's draws replayed, then the public per-image ops one after the other in
    the drawn order (the official RandomAugment.__call__ loop), then Cutout."""
    height, width, _ = image.shape
    weak_key, op_key, apply_key, sign_key, cutout_key = jax.random.split(key, 5)
    flip, shift_y, shift_x = augment._sample_weak_params(weak_key, True, pad)
    ops = np.asarray(jax.random.randint(op_key, (2,), 0, 14))
    applied = np.asarray(jax.random.uniform(apply_key, (2,))) < op_prob
    signs = np.where(np.asarray(jax.random.bernoulli(sign_key, shape=(2,))), 1.0, -1.0)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    top, left = pad + int(shift_y), pad + int(shift_x)
    out = padded[top : top + height, left : left + width]
    out = np.flip(out, axis=1) if bool(flip) else out
    A = augment
    for op, use, sign in zip(ops, applied, signs):
        if not use:
            continue
        out = {
            A.IDENTITY: lambda x: x,
            A.AUTO_CONTRAST: lambda x: photometric(x, auto_contrast=True),
            A.EQUALIZE: lambda x: photometric(x, equalize=True),
            A.ROTATE: lambda x: A.warp(x, A.rotate_matrix(sign * 30.0, height, width), fill),
            A.SOLARIZE: lambda x: photometric(x, solarize_threshold=256),
            A.COLOR: lambda x: photometric(x, color=1.9),
            A.CONTRAST: lambda x: photometric(x, contrast=1.9),
            A.BRIGHTNESS: lambda x: photometric(x, brightness=1.9),
            A.SHARPNESS: lambda x: photometric(x, sharpness=1.9),
            A.SHEAR_X: lambda x: A.warp(x, A.shear_x_matrix(sign * 0.3), fill),
            A.SHEAR_Y: lambda x: A.warp(x, A.shear_y_matrix(sign * 0.3), fill),
            A.TRANSLATE_X: lambda x: A.warp(x, A.translate_matrix(sign * width * 10 / 32, 0), fill),
            A.TRANSLATE_Y: lambda x: A.warp(
                x, A.translate_matrix(0, sign * height * 10 / 32), fill
            ),
            A.POSTERIZE: lambda x: photometric(x, posterize_bits=4),
        }[int(op)](np.asarray(out))
        out = np.asarray(out)
    centre = np.asarray(jax.random.randint(cutout_key, (2,), 0, jnp.array([height, width])))
    out = np.asarray(A.cutout(out, centre[0], centre[1], cutout_size, fill))
    return out, [int(op) for op, use in zip(ops, applied) if use]


def test_randaugment_view_applies_the_drawn_ops_in_the_drawn_order():
    images = random_images((24, 16, 16, 3), seed=3)
    rng = jax.random.PRNGKey(7)
    out = np.asarray(augment.randaugment_view(rng, images, pad_fraction=0.25, op_prob=0.8))
    keys = jax.random.split(rng, len(images))
    drawn = []
    for key, image, ours in zip(keys, images, out):
        expected, ops = _reference_randaugment(key, image, 4, 0.8, 8, 128)
        np.testing.assert_allclose(ours, expected, atol=1, err_msg=str(ops))
        assert np.mean(ours != expected) < 0.01, ops
        drawn.append(ops)
    # Enough variety that order matters: a geometric and a photometric op in both orders.
    geometric = {augment.ROTATE, augment.SHEAR_X, augment.SHEAR_Y}
    geometric |= {augment.TRANSLATE_X, augment.TRANSLATE_Y}
    pairs = [ops for ops in drawn if len(ops) == 2]
    assert any(a in geometric and b not in geometric for a, b in pairs)
    assert any(a not in geometric and b in geometric for a, b in pairs)


def test_order_matters_geometric_then_photometric_differs_from_the_reverse():
    image = random_images((16, 16, 3), seed=5, low=20, high=60)
    channel_first = jnp.moveaxis(jnp.asarray(image, jnp.float32), -1, 0)
    fill = jnp.float32(128)

    @jax.jit  # one program instead of one per op
    def slot(image, op):  # one drawn op: its warp, then its photometric step
        op = jnp.int32(op)
        warped = augment._randaugment_warp(image, op, jnp.float32(1.0), fill)
        return augment._photometric_step(warped, augment._randaugment_photometric_params(op))

    rotate_first = slot(slot(channel_first, augment.ROTATE), augment.AUTO_CONTRAST)
    contrast_first = slot(slot(channel_first, augment.AUTO_CONTRAST), augment.ROTATE)
    expected = photometric(
        augment.warp(image, augment.rotate_matrix(30.0, 16, 16), 128), auto_contrast=True
    )
    np.testing.assert_array_equal(jnp.moveaxis(rotate_first, 0, -1), expected)
    expected = augment.warp(
        photometric(image, auto_contrast=True), augment.rotate_matrix(30.0, 16, 16), 128
    )
    np.testing.assert_array_equal(jnp.moveaxis(contrast_first, 0, -1), expected)
    assert np.abs(np.asarray(rotate_first) - np.asarray(contrast_first)).max() > 50


def test_official_cutout_is_16_px_gray_128_on_32_px():
    images = np.zeros((64, 32, 32, 3), np.uint8)
    out = np.asarray(
        augment.randaugment_view(
            jax.random.PRNGKey(0), images, flip=False, pad_fraction=0.0, op_prob=0.0
        )
    )
    filled = np.all(out == 128, axis=-1)
    assert set(np.unique(out)) == {0, 128}
    rows, cols = filled.any(axis=2), filled.any(axis=1)
    extents = [(r.sum(), c.sum()) for r, c in zip(rows, cols)]
    assert max(extents) == (16, 16)  # unclipped squares are exactly 16 x 16
    assert all(r <= 16 and c <= 16 and r >= 8 and c >= 8 for r, c in extents)
    assert np.all(filled.sum(axis=(1, 2)) == [r * c for r, c in extents])  # rectangles


def test_randaugment_without_ops_is_identity_plus_cutout():
    images = random_images(COLOR_BATCH, low=0, high=100)  # no fill-valued pixels
    out = np.asarray(
        augment.randaugment_view(
            jax.random.PRNGKey(0), images, flip=False, pad_fraction=0.0, op_prob=0.0
        )
    )
    filled = np.all(out == 128, axis=-1)
    np.testing.assert_array_equal(out[~filled], images[~filled])
    side = round(0.5 * COLOR_BATCH[1])
    counts = filled.sum(axis=(1, 2))
    assert np.all(counts >= (side // 2) ** 2)  # clipped at a corner
    assert np.all(counts <= side * side)


# ---------------------------------------------------------------------------
# SimCLR view
# ---------------------------------------------------------------------------


def test_simclr_full_crop_without_jitter_is_identity():
    images = random_images((3, 8, 8, 3))  # square: a full 1:1 crop exists
    out = augment.simclr_view(
        jax.random.PRNGKey(0),
        images,
        flip=False,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        jitter_prob=0.0,
        grayscale_prob=0.0,
    )
    np.testing.assert_array_equal(out, images)


def test_simclr_grayscale_makes_channels_equal():
    images = random_images(COLOR_BATCH)
    out = np.asarray(augment.simclr_view(jax.random.PRNGKey(0), images, grayscale_prob=1.0))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_simclr_crop_params_stay_inside_image():
    keys = jax.random.split(jax.random.PRNGKey(0), 256)
    sample = jax.jit(
        jax.vmap(
            lambda k: augment._random_resized_crop_params(k, 12, 10, (0.2, 1.0), (3 / 4, 4 / 3))
        )
    )
    top, left, crop_h, crop_w = map(np.asarray, sample(keys))
    assert np.all((crop_h >= 1) & (crop_w >= 1))
    assert np.all((top >= 0) & (top + crop_h <= 12))
    assert np.all((left >= 0) & (left + crop_w <= 10))
    area = crop_h * crop_w / 120.0
    assert area.min() < 0.5 and area.max() > 0.7
    ratio = crop_w / crop_h
    assert np.all((ratio > 0.5) & (ratio < 2.0))


# ---------------------------------------------------------------------------
# make_view
# ---------------------------------------------------------------------------


def test_make_view_dispatches_and_filters_options():
    images = random_images(COLOR_BATCH)
    rng = jax.random.PRNGKey(0)
    # A union of options for several views; each view takes its own.
    options = dict(pad_fraction=0.125, num_ops=2, grayscale_prob=1.0)
    np.testing.assert_array_equal(augment.make_view("none", rng, images, **options), images)
    np.testing.assert_array_equal(
        augment.make_view("weak", rng, images, **options),
        augment.weak_view(rng, images),
    )
    np.testing.assert_array_equal(
        augment.make_view("randaugment", rng, images, **options),
        augment.randaugment_view(rng, images),
    )
    simclr = augment.make_view("simclr", rng, images, **options)
    np.testing.assert_array_equal(simclr, augment.simclr_view(rng, images, grayscale_prob=1.0))
    assert np.all(simclr[..., 0] == simclr[..., 2])  # the option reached simclr
    assert set(augment.VIEWS) == {"none", "weak", "randaugment", "simclr"}


def test_make_view_rejects_unknown_name_and_option():
    images = random_images(GRAY_BATCH)
    with pytest.raises(ValueError, match="randaugment"):
        augment.make_view("strong", jax.random.PRNGKey(0), images)
    with pytest.raises(TypeError, match="pad_fractoin"):
        augment.make_view("weak", jax.random.PRNGKey(0), images, pad_fractoin=0.1)
