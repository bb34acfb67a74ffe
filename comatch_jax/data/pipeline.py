"""The data a run trains on, and the batches cut from it.

`prepare_data(config)` makes the same parts of any source (TFDS, IDX files, scikit-learn's
digits, an image folder): labeled images, an unlabeled pool, test images, with the answers
of `dataset.extra_labels_csv` applied in one place. Batches are a pure function of (seed,
step), so a resumed run draws the same ones: `epoch_permutation_indices` computes the rows of
each in O(batch), inside the jitted step on device-resident arrays or on the host
(`host_batch`, run ahead by a `Prefetcher`); `step_with_input` sets either up for the trainer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from comatch_jax import multihost
from comatch_jax.core import methods
from comatch_jax.data import loader
from comatch_jax.data.answers import read_answers
from comatch_jax.data.dataset import ANSWERS, ImageDataset, data_fingerprint, resolve_normalization

# Share of the free device memory (host RAM on a CPU) the training images may take on the
# device: the rest is left for the model, its activations and the optimizer state.
DEVICE_DATA_FRACTION = 0.5


class RowSubset:
    """Rows `rows` (int [N], ascending) of a large image array, read only when indexed: the
    unlabeled pool of an image folder less some rows, without reading the memmap whole."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, np.asarray(rows)
        self.shape, self.dtype = (len(self.rows), *images.shape[1:]), images.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.images[self.rows[index]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.images[self.rows], dtype)


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
    """The arrays one run trains and evaluates on (uint8 images [N, H, W, C], int32 labels).

    Ids name an image for the answers CSV: its index in the train split (a dataset read by
    name; -1 for an `extra_unlabeled_split` image), or its row of `unlabeled_paths` (an image
    folder; -1 for an image of labeled/). unlabeled_labels is the ground truth (-1 where
    unknown), used only to monitor pseudo-label accuracy. unknown_ids are the images answered
    `answers.UNKNOWN`. mean/std: the resolved normalisation; fingerprint: the data's
    (dataset.data_fingerprint and the answers), checked when a run resumes.
    """

    labeled_images: np.ndarray
    labels: np.ndarray
    unlabeled_images: np.ndarray | RowSubset
    unlabeled_labels: np.ndarray
    labeled_ids: np.ndarray
    unlabeled_ids: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str
    unlabeled_paths: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    fingerprint: dict[str, Any] | None = None
    unknown_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))


def split_labeled_unlabeled(
    labels: np.ndarray,
    *,
    num_labels: int,
    num_classes: int,
    seed: int,
    include_labeled_in_unlabeled: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int32 (labeled, unlabeled) indices of `labels` (int [N] in 0..num_classes-1):
    num_labels / num_classes of each class drawn at random (seeded), and every other index
    (or every index, `include_labeled_in_unlabeled`). Raises ValueError (one line) when
    num_labels is no positive multiple of num_classes or a class has too few images."""
    if num_labels <= 0 or num_labels % num_classes:
        raise ValueError(
            f"num_labels={num_labels} is not a positive multiple of num_classes={num_classes}, "
            "which a class-balanced split needs; set --config.num_labels."
        )
    per_class, rng, chosen = num_labels // num_classes, np.random.default_rng(seed), []
    for c in range(num_classes):
        members = np.flatnonzero(np.asarray(labels) == c)
        if members.size < per_class:
            raise ValueError(
                f"Class {c} has {members.size} images but {per_class} labels per class are "
                "needed; lower --config.num_labels."
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    labeled = np.sort(np.concatenate(chosen)).astype(np.int32)
    everything = np.arange(len(labels), dtype=np.int32)
    return labeled, (
        everything if include_labeled_in_unlabeled else np.setdiff1d(everything, labeled)
    )


def _check_image_size(config: ml_collections.ConfigDict, dataset: ImageDataset) -> None:
    """A one-line ValueError for images too small for small_cnn, which halves them
    len(widths) - 1 times (VALID 2x2 pooling leaves no pixels of a smaller image; wide_resnet
    and resnet take any size). (An image folder of one class is refused as it is read.)"""
    (height, width), needed = dataset.train_images.shape[1:3], 2 ** (len(config.model.widths) - 1)
    if config.model.name == "small_cnn" and min(height, width) < needed:
        fix = (
            f"set --config.dataset.image_size={needed} or more"
            if dataset.name == "image_folder"
            else f"use at most {int(np.log2(min(height, width))) + 1} model.widths"
        )
        raise ValueError(
            f"model small_cnn with {len(config.model.widths)} widths needs images of at least "
            f"{needed}x{needed} pixels, the data has {height}x{width}; {fix}."
        )


def prepare_data(config: ml_collections.ConfigDict, dataset: Any = None) -> SemiSupervisedData:
    """The labeled images, unlabeled pool and test images of a run of `config`.

    `dataset` (an ImageDataset) defaults to `loader.load_dataset(config)`. A dataset read by
    name is split (`split_labeled_unlabeled`) and its extra_unlabeled_split joins the pool; an
    image folder's train part is labeled whole and its unlabeled part is the pool (a memmap,
    never read whole). The answers of `dataset.extra_labels_csv` (answers.read_answers) join
    the labeled set, ordered by id, and leave the pool, except in an image folder or with
    include_labeled_in_unlabeled; with dataset.drop_unknown_answers the images answered
    UNKNOWN leave the pool too. Raises ValueError (one line) for data this run cannot use.
    """
    options = config.dataset
    dataset = dataset if dataset is not None else loader.load_dataset(config)
    _check_image_size(config, dataset)
    mean, std = resolve_normalization(options.mean, options.std, dataset)
    folder = dataset.name == "image_folder"
    images, labels = dataset.train_images, dataset.train_labels
    if folder:  # ids are rows of unlabeled_paths; no ground truth for the pool
        labeled_ids = np.full(len(labels), -1, np.int32)
        pool_images, pool_ids = dataset.unlabeled_images, np.arange(len(dataset.unlabeled_paths))
        pool_labels = np.full(len(pool_ids), -1, np.int32)
        labeled_images = np.asarray(images)
    else:  # ids are train-split indices; the extra unlabeled split has neither ids nor labels
        labeled_ids, pool_ids = split_labeled_unlabeled(
            labels,
            num_labels=config.num_labels,
            num_classes=dataset.num_classes,
            seed=config.seed,
            include_labeled_in_unlabeled=options.include_labeled_in_unlabeled,
        )
        labeled_images, labels = images[labeled_ids], labels[labeled_ids]
        pool_images, pool_labels = images[pool_ids], dataset.train_labels[pool_ids]
        extra = dataset.unlabeled_images
        if extra is not None and len(extra):
            pool_images = np.concatenate([pool_images, extra])
            pool_labels = np.concatenate([pool_labels, np.full(len(extra), -1, np.int32)])
            pool_ids = np.concatenate([pool_ids, np.full(len(extra), -1, np.int32)])
    fingerprint = data_fingerprint(dataset)
    fingerprint["parts"][ANSWERS] = {"count": 0, "files": None}
    unknown_ids, answered = np.zeros(0, np.int32), ""
    if options.extra_labels_csv:
        if not os.path.isfile(options.extra_labels_csv):
            raise ValueError(
                f"dataset.extra_labels_csv: no file {options.extra_labels_csv} (the answers "
                "the run trains with); put the file there, or give its path"
            )
        answers = read_answers(
            options.extra_labels_csv,
            dataset.class_names,
            num_images=len(dataset.train_labels),
            labeled_ids=labeled_ids,
            root=os.path.abspath(options.root) if folder else None,
            unlabeled_paths=dataset.unlabeled_paths,
        )
        unknown_ids, count = answers.unknown_ids, len(answers.ids) + len(answers.unknown_ids)
        fingerprint["parts"][ANSWERS] = {"count": count, "files": answers.digest}
        answered = f" ({len(answers.ids)} answered in {options.extra_labels_csv})"
        row_of = np.full(max(len(dataset.train_labels), len(pool_ids)), -1, np.int64)
        row_of[pool_ids[pool_ids >= 0]] = np.flatnonzero(pool_ids >= 0)
        order = np.argsort(np.concatenate([labeled_ids, answers.ids]), kind="stable")
        labeled_images = np.concatenate([labeled_images, pool_images[row_of[answers.ids]]])[order]
        labels = np.concatenate([labels, answers.labels])[order]
        labeled_ids = np.concatenate([labeled_ids, answers.ids])[order]
        # drop_unknown_answers is read only where there are such answers.
        leave = [unknown_ids] if len(unknown_ids) and options.drop_unknown_answers else []
        if not (folder or options.include_labeled_in_unlabeled):
            leave.append(answers.ids)
        keep = ~np.isin(pool_ids, np.concatenate(leave or [unknown_ids[:0]]))
        if not keep.all():
            pool_ids, pool_labels = pool_ids[keep], pool_labels[keep]
            if isinstance(pool_images, np.memmap):
                pool_images = RowSubset(pool_images, np.flatnonzero(keep))
            else:
                pool_images = pool_images[keep]
    if not len(pool_ids) and loader.draws_unlabeled_images(config):
        needs = bool(methods.get_method(config.method).unlabeled_views)
        what = f"method={config.method} trains on" if needs else f"mu={config.mu} asks for"
        fix = "set --config.mu=0"
        if needs:
            fix = "use --config=configs/supervised.py, or add unlabeled images"
        raise ValueError(
            f"{what} unlabeled images, but none are left (every image is labeled); {fix}."
        )
    logging.info(
        f"Data from {dataset.source}: {len(labels)} labeled{answered}, {len(pool_ids)} "
        f"unlabeled, {len(dataset.test_labels)} test images of "
        f"{'x'.join(map(str, images.shape[1:]))}, {dataset.num_classes} classes."
    )
    return SemiSupervisedData(
        labeled_images=labeled_images,
        labels=labels.astype(np.int32),
        unlabeled_images=pool_images,
        unlabeled_labels=pool_labels.astype(np.int32),
        labeled_ids=labeled_ids.astype(np.int32),
        unlabeled_ids=pool_ids.astype(np.int32),
        test_images=np.asarray(dataset.test_images),
        test_labels=dataset.test_labels.astype(np.int32),
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        source=dataset.source,
        unlabeled_paths=tuple(dataset.unlabeled_paths),
        mean=mean,
        std=std,
        fingerprint=fingerprint,
        unknown_ids=unknown_ids,
    )


def prepare_data_in_turn(config: ml_collections.ConfigDict, dataset: Any) -> SemiSupervisedData:
    """prepare_data; in a multi-process run process 0 first, so that it alone builds an image
    folder's decode cache (on a shared disk the others then read it)."""
    if jax.process_count() == 1 or dataset is not None or config.dataset.name != "image_folder":
        return prepare_data(config, dataset)
    data = prepare_data(config, dataset) if multihost.is_primary() else None
    multihost.barrier("image cache built")
    return data if data is not None else prepare_data(config, dataset)


def with_normalization(
    config: ml_collections.ConfigDict, data: SemiSupervisedData
) -> ml_collections.ConfigDict:
    """A copy of `config` whose dataset.mean/std are the resolved values of `data`, so that
    the step, the saved config and every command normalise alike."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.dataset.mean, resolved.dataset.std = tuple(data.mean), tuple(data.std)
    return resolved


# ------------------------------------------------------------------ data placement


def free_device_memory(device: jax.Device) -> tuple[int, str]:
    """(free bytes, what was measured) of `device`: its allocator's limit minus what is in
    use (GPU/TPU memory_stats), or the host's available RAM for a CPU device."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), device.device_kind
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "host RAM"
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host RAM"


def data_on_device(config: ml_collections.ConfigDict, data: SemiSupervisedData) -> bool:
    """Whether the run keeps its training images on the device: config.data_on_device when
    set, else whether they fit in DEVICE_DATA_FRACTION of the first device's free memory
    (each device holds them whole: 14 GB fit on an 80 GB GPU, not on a 16 GB one). Logs one
    line saying what was chosen and why."""
    images = (data.labeled_images, data.unlabeled_images)
    nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in images)
    size = f"{nbytes / 2**30:.2f} GiB of training images"
    if config.data_on_device is not None:
        on_device = bool(config.data_on_device)
        reason = f"data_on_device={on_device} set in the config ({size})"
    else:
        free, what = free_device_memory(jax.local_devices()[0])
        on_device = nbytes <= DEVICE_DATA_FRACTION * free
        reason = (
            f"{size} {'fit' if on_device else 'do not fit'} in {DEVICE_DATA_FRACTION:.0%} of the "
            f"{free / 2**30:.1f} GiB free ({what}); --config.data_on_device=True/False overrides"
        )
    where = (
        "on the device, batches drawn inside the step"
        if on_device
        else "on the host, batches gathered and prefetched there"
    )
    logging.info("Images %s: %s.", where, reason)
    return on_device


# ----------------------------------------------------------------------- sampling
#
# Indices walk through a fresh random permutation of the dataset every epoch. Position
# p = step * batch_size + i of the stream is element p % N of epoch p // N's permutation, and
# that element is computed directly, in O(batch_size) work independent of N, by a keyed
# bijection of [0, N): a Feistel network over the smallest power-of-two domain 2**b >= N with
# cycle-walking (re-encrypting values in [N, 2**b) until they land in [0, N); Black & Rogaway,
# "Ciphers with Arbitrary Finite Domains", CT-RSA 2002, section 5). Round keys are hashed
# from the PRNG key's words, the stream (labeled / unlabeled) and the epoch. The same uint32
# arithmetic runs under jax.numpy (inside a jitted step) and NumPy (on the host, no
# accelerator work) with bit-identical results. grain's `index_shuffle` (the same idea) is a
# C++ host function that jit cannot trace, and tf.random_index_shuffle is TensorFlow.

# Feistel rounds: 3-4 rounds of a pseudorandom function give a pseudorandom permutation
# (Luby-Rackoff); 6 keep small and unbalanced domains well mixed at negligible cost.
NUM_ROUNDS = 6
LABELED_STREAM, UNLABELED_STREAM = 0, 1
_U32, _GOLDEN, _MASK = np.uint32, 0x9E3779B9, 0xFFFFFFFF


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    h = (h ^ (h >> _U32(16))) * _U32(0x85EBCA6B)
    h = (h ^ (h >> _U32(13))) * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _round_keys(key_words, stream: int, epoch, xp) -> list:
    """NUM_ROUNDS uint32 arrays shaped like `epoch`: hashes of (key words, stream, epoch, round)."""
    # Constants are folded in Python and masked to 32 bits: only array ops wrap (silently).
    h = xp.full(epoch.shape, _U32((stream * _GOLDEN + 0x6A09E667) & _MASK), dtype=xp.uint32)
    for i in range(key_words.shape[0]):
        h = _fmix32((h ^ key_words[i]) + _U32((_GOLDEN * (i + 1)) & _MASK))
    h = _fmix32(h ^ epoch)
    return [_fmix32(h ^ _U32((0x27D4EB2F * (r + 1)) & _MASK)) for r in range(NUM_ROUNDS)]


def _feistel(x, keys, bits: int):
    """A bijection of [0, 2**bits) (uint32 x): NUM_ROUNDS rounds, each mapping
    (L, R) = (x >> r, x & (2**r - 1)) to (R << l) | (L ^ F(R, key)), l = bits - r."""
    r, l = bits // 2, bits - bits // 2
    mask_l, mask_r = _U32((1 << l) - 1), _U32((1 << r) - 1)
    for key in keys:
        left, right = x >> _U32(r), x & mask_r
        x = (right << _U32(l)) | (left ^ (_fmix32(right ^ key) & mask_l))
    return x


def _permute(index, keys, size: int, xp):
    """Element `index` (uint32, < size) of the keyed permutation of [0, size), by cycle-walking:
    values outside [0, size) are mapped again by the bijection of [0, 2**bits), whose cycles
    contain their start, so every walk ends (fewer than 2 walks per value on average); under
    jit in a lax.while_loop until none is left."""
    bits, limit = max(size - 1, 0).bit_length(), _U32(size)
    x = _feistel(index, keys, bits)
    if xp is np:
        while np.any(x >= limit):
            x = np.where(x >= limit, _feistel(x, keys, bits), x)
        return x
    walk = lambda x: jnp.where(x >= limit, _feistel(x, keys, bits), x)
    return jax.lax.while_loop(lambda x: jnp.any(x >= limit), walk, x)


def epoch_permutation_indices(
    rng: jax.Array,
    step: Any,
    *,
    dataset_size: int,
    batch_size: int,
    stream: int = LABELED_STREAM,
) -> Any:
    """Indices int32[batch_size] of batch `step` of the epoch-wise shuffled stream above:
    every index of [0, dataset_size) once per epoch; batches may span epochs (64 labeled
    images drawn from 40). `rng` is a PRNG key (raw uint32 or typed); `stream` separates
    streams drawn with one key. Inside jit (a traced `rng` or `step`) returns a jax.Array
    (int32 positions: below 2**31 images seen), otherwise a NumPy array of the same values.
    Raises ValueError for dataset_size outside [1, 2**31) or a key that is not uint32 data.
    """
    if not 1 <= dataset_size < 2**31:
        raise ValueError(f"dataset_size must be in [1, 2**31), got {dataset_size}")
    traced = isinstance(rng, jax.core.Tracer) or isinstance(step, jax.core.Tracer)
    xp = jnp if traced else np
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    words = (rng if traced else np.asarray(rng)).reshape(-1)
    if words.dtype != xp.uint32:
        raise ValueError(f"sampling rng must be a PRNG key (uint32 key data), got {words.dtype}")
    if traced:
        positions = jnp.asarray(step, jnp.int32) * batch_size + jnp.arange(
            batch_size, dtype=jnp.int32
        )
    else:
        positions = np.int64(step) * batch_size + np.arange(batch_size, dtype=np.int64)
    epoch = (positions // dataset_size).astype(xp.uint32)
    index = (positions % dataset_size).astype(xp.uint32)
    keys = _round_keys(words, stream, epoch, xp)
    return _permute(index, keys, dataset_size, xp).astype(xp.int32)


def batch_indices(
    data: dict[str, Any], step: Any, *, batch_size: int, unlabeled_batch_size: int
) -> dict[str, Any]:
    """Rows of batch `step`: {'labeled': int32[batch_size], 'unlabeled': int32[...]}.

    Reads only the sizes of `data`'s label arrays and its `sampling_rng`, so every process of
    a multi-process run computes the same global batch and reads just its own rows.
    """
    rng = data["sampling_rng"]
    draw = lambda array, size, stream: epoch_permutation_indices(
        rng, step, dataset_size=data[array].shape[0], batch_size=size, stream=stream
    )
    indices = {"labeled": draw("labels", batch_size, LABELED_STREAM)}
    if unlabeled_batch_size:
        indices["unlabeled"] = draw("unlabeled_labels", unlabeled_batch_size, UNLABELED_STREAM)
    return indices


# The rows (batch_indices' keys) each array of a batch is gathered with.
BATCH_ROWS = {
    "labeled_images": "labeled",
    "labels": "labeled",
    "unlabeled_images": "unlabeled",
    "unlabeled_labels": "unlabeled",
}


def sample_batch(
    data: dict[str, Any], step: Any, *, batch_size: int, unlabeled_batch_size: int
) -> dict[str, Any]:
    """Batch `step` gathered from whole-dataset arrays (on the device or the host): `data`
    holds labeled_images [NL, H, W, C], labels [NL], unlabeled_images [NU, H, W, C],
    unlabeled_labels [NU] and sampling_rng (a PRNG key)."""
    indices = batch_indices(
        data, step, batch_size=batch_size, unlabeled_batch_size=unlabeled_batch_size
    )
    return {name: data[name][indices[rows]] for name, rows in BATCH_ROWS.items() if rows in indices}


# ---------------------------------------------------------- batches for the step


def host_batch(
    arrays: dict[str, Any],
    step: int,
    *,
    batch_size: int,
    unlabeled_batch_size: int,
    sharding: jax.sharding.Sharding,
) -> dict[str, jax.Array]:
    """Batch `step` of host arrays (NumPy, memmaps, RowSubset; as sample_batch's) as global
    jax.Arrays split by `sharding`: every process draws the same global rows and reads only
    those of its own devices, in ascending order (sequential on a memory-mapped file)."""
    indices = batch_indices(
        arrays, int(step), batch_size=batch_size, unlabeled_batch_size=unlabeled_batch_size
    )

    def gather(source: Any, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *source.shape[1:]), source.dtype)
        out[order] = source[rows[order]]
        return out

    batch = {}
    for name, rows in BATCH_ROWS.items():
        if rows in indices:
            source, selected = arrays[name], np.asarray(indices[rows])
            batch[name] = jax.make_array_from_callback(
                (len(selected), *source.shape[1:]),
                sharding,
                lambda index, source=source, selected=selected: gather(source, selected[index[0]]),
            )
    return batch


class Prefetcher:
    """Serves make_batch(step) for consecutive steps from `start_step`, computed ahead.

    One background thread computes make_batch(start_step), make_batch(start_step + 1), ... in
    order, at most `depth` steps ahead of the last `get`, up to `stop_step` (exclusive; None =
    no end), so batch `step` is the same whatever the timing. `get(step)` returns it (steps
    in order; an exception of make_batch is raised by the `get` of its step). Use as a context
    manager or call `close`. Raises ValueError for depth < 1 or a step out of order.
    """

    def __init__(
        self,
        make_batch: Callable[[int], Any],
        *,
        start_step: int,
        stop_step: int | None = None,
        depth: int = 2,
    ):
        if depth < 1:
            raise ValueError(f"Prefetcher depth must be >= 1, got {depth}")
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "comatch_jax-prefetch")
        steps = itertools.count(start_step) if stop_step is None else range(start_step, stop_step)
        # Submitted as they are taken: `depth` now, then one more at each `get`.
        self._submitted = (self._pool.submit(make_batch, step) for step in steps)
        self._pending = collections.deque(itertools.islice(self._submitted, depth))
        self._next, self._stop = int(start_step), stop_step

    def get(self, step: int) -> Any:
        """make_batch(step); blocks until it is ready."""
        if step != self._next:
            raise ValueError(
                f"Prefetcher serves consecutive steps: asked for step {step}, the next is "
                f"{self._next}; make a new Prefetcher to start elsewhere."
            )
        if not self._pending:
            raise ValueError(f"Prefetcher stops before step {self._stop}, asked for {step}")
        try:
            batch = self._pending.popleft().result()
        except BaseException:
            self.close()
            raise
        self._next += 1
        self._pending.extend(itertools.islice(self._submitted, 1))
        return batch

    def close(self) -> None:  # drops the batches not started, waits for the one being made
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def step_with_input(
    config: ml_collections.ConfigDict,
    data: SemiSupervisedData,
    step_fn: Callable,
    sampling_key: jax.Array,
    replicated: jax.sharding.NamedSharding,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[Callable, Callable[[int], Any], bool]:
    """(jitted step, next_input(step), on_host) for the trainer's loop, the state donated and
    batches drawn with `sampling_key`. With the images on the device (data_on_device) the
    step draws its own batch from the whole arrays (sample_batch at state.step, split over
    the mesh by `batch_sharding`), and next_input returns the arrays; otherwise (on_host)
    next_input(step) gathers batch `step` on the host (host_batch), for a Prefetcher."""
    arrays = {
        "labeled_images": data.labeled_images,
        "labels": data.labels,
        "unlabeled_images": data.unlabeled_images,
        "unlabeled_labels": data.unlabeled_labels,
    }
    sizes = dict(batch_size=config.batch_size, unlabeled_batch_size=config.batch_size * config.mu)
    jit = lambda step: jax.jit(step, out_shardings=(replicated, replicated), donate_argnums=0)
    if not data_on_device(config, data):
        arrays["sampling_rng"] = sampling_key
        make_batch = lambda step: host_batch(arrays, step, sharding=batch_sharding, **sizes)
        return jit(step_fn), make_batch, True
    arrays = jax.device_put({k: np.asarray(v) for k, v in arrays.items()}, replicated)
    # Made by a jitted function, so the key is one global array over every process.
    arrays["sampling_rng"] = jax.jit(lambda: sampling_key, out_shardings=replicated)()

    def sampling_step(state: Any, data: dict[str, jax.Array]):  # batch `state.step`
        batch = jax.lax.with_sharding_constraint(
            sample_batch(data, state.step, **sizes), batch_sharding
        )
        return step_fn(state, batch)

    return jit(sampling_step), lambda step: arrays, False
