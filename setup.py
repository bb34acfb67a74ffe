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
    # The labelling page's template ships with the package; its test drives Chromium.
    package_data={"comatch_jax.commands": ["labelling_page.html", "labelling_page.js"]},
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.8", "nbclient", "nbformat", "ipykernel", "selenium"]
    },
    # The commands a finished run uses; each is also `python -m comatch_jax.commands.NAME`.
    entry_points={
        "console_scripts": [
            "comatch-predict=comatch_jax.commands.predict:command",
            "comatch-request-labels=comatch_jax.commands.request_labels:command",
            "comatch-answer-from-truth=comatch_jax.commands.answer_from_truth:command",
            "comatch-analyze=comatch_jax.commands.analyze:command",
            "comatch-probe=comatch_jax.commands.probe:command",
        ]
    },
)
