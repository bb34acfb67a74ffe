"""Image-classification datasets: one reader per source, one dataset type, the labeled split.

Modules:
  dataset        ImageDataset (what every reader returns) and streamed pixel statistics.
  idx            Fashion-MNIST / MNIST IDX files (NumPy only).
  tfds_source    TensorFlow Datasets by name.
  digits         scikit-learn's 8x8 digits.
  image_folder   labeled/<class>/, unlabeled/**, val/<class>/ folders of image files.
  folder_cache   their incremental tf.data decode cache (memory-mapped .npy files).
  split          the class-balanced labeled/unlabeled split.
  normalization  standard mean/std per named dataset, and `resolve_normalization`.
  fingerprint    `data_fingerprint` and `describe_data_change`.
  loader         `load_dataset(config.dataset)`: the reader for the configured name.

TensorFlow is imported lazily, only by tfds_source and folder_cache (through _tensorflow), so
IDX files, digits and the split work without it.
"""

from comatch_jax.data.dataset import ImageDataset, image_statistics, pixel_sums
from comatch_jax.data.fingerprint import data_fingerprint, describe_data_change
from comatch_jax.data.folder_cache import decode_images_to_cache
from comatch_jax.data.idx import load_idx_dataset, read_idx_file
from comatch_jax.data.image_folder import IMAGE_EXTENSIONS, list_image_files, load_image_folder
from comatch_jax.data.loader import KNOWN_DATASETS, SOURCES, load_dataset
from comatch_jax.data.normalization import STANDARD_STATISTICS, resolve_normalization
from comatch_jax.data.split import split_labeled_unlabeled
from comatch_jax.data.tfds_source import load_tfds_dataset, tfds_is_prepared

__all__ = [
    "IMAGE_EXTENSIONS",
    "KNOWN_DATASETS",
    "SOURCES",
    "STANDARD_STATISTICS",
    "ImageDataset",
    "data_fingerprint",
    "decode_images_to_cache",
    "describe_data_change",
    "image_statistics",
    "list_image_files",
    "load_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "load_tfds_dataset",
    "pixel_sums",
    "read_idx_file",
    "resolve_normalization",
    "split_labeled_unlabeled",
    "tfds_is_prepared",
]
