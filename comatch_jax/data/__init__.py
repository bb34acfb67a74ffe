"""Image-classification data: one reader per source, and what a run trains on.

  dataset        ImageDataset (what every reader returns), pixel statistics, normalisation,
                 the data fingerprint a resume is checked against.
  idx, tfds_source, digits, image_folder (+ folder_cache, its decode cache)   the readers.
  loader         `load_dataset(config)`: the reader for the configured name.
  answers        the answers (`dataset.extra_labels_csv`): a CSV or a Label Studio export.
  pipeline       `prepare_data(config)`: labeled images, unlabeled pool and test images;
                 the batch sampler, host batches and their prefetch.

TensorFlow is imported on first use, only to read TFDS data or decode an image folder.
"""

from comatch_jax.data.dataset import (
    STANDARD_STATISTICS,
    ImageDataset,
    data_fingerprint,
    describe_data_change,
    image_statistics,
    pixel_sums,
    resolve_normalization,
)
from comatch_jax.data.folder_cache import decode_images_to_cache
from comatch_jax.data.idx import load_idx_dataset, read_idx_file
from comatch_jax.data.image_folder import IMAGE_EXTENSIONS, list_image_files, load_image_folder
from comatch_jax.data.loader import KNOWN_DATASETS, load_dataset
from comatch_jax.data.pipeline import split_labeled_unlabeled
from comatch_jax.data.tfds_source import load_tfds_dataset, tfds_is_prepared
