"""comatch_jax: semi-supervised image classification (CoMatch and friends) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="comatch_jax",
    version="0.1.0",
    description="Semi-supervised image classification in JAX/Flax: CoMatch, FixMatch, SSL baselines.",
    packages=find_packages(include=["comatch_jax", "comatch_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9.6",
        "numpy>=1.26",
        "clu>=0.0.12",
        "ml_collections>=0.1.1",
        "orbax-checkpoint>=0.9",
        "dm-pix>=0.4.3",
        "absl-py",
        "tensorboard",  # clu's TensorBoard writer; tensorflow-cpu does not bring it
        "importlib_resources",  # tensorflow-datasets needs it to download
        "matplotlib",
        "scikit-learn",
        "safetensors",  # pretrained PyTorch weights (torch_weights.load_state_dict)
    ],
    # f1-labelling: the labelling page's template ships with the package; its test drives Chromium.
    package_data={"comatch_jax.commands": ["labelling_page.html", "labelling_page.js"]},
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "nbclient", "nbformat", "ipykernel", "selenium"]
    },
)
