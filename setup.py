"""keras_brt: the Block-Recurrent Transformer for Keras 3 and TensorFlow."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(HERE, "keras_brt", "version.py")) as f:
    exec(f.read(), version)
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="keras-brt",
    version=version["__version__"],
    description="Block-Recurrent Transformer (Hutchins et al., NeurIPS 2022) for Keras 3 / TensorFlow",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["keras_brt", "keras_brt.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Versions that work together: tensorflow-text must match TF's minor version (2.20,
        # the newest with a TPU build, or 2.21), and keras_brt's recurrent cell relies on
        # Keras 3.15's RNN behaviour.
        "tensorflow>=2.20,<2.22",
        "tensorflow-text>=2.20,<2.22",
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "sentencepiece>=0.2",
        "matplotlib>=3.7",
        "tensorboard>=2.19",  # TensorFlow 2.21 no longer installs it; the TensorBoard callback needs it
    ],
    extras_require={
        # `keras-brt serve`: TF Serving's REST protocol with KServe's Python model server.
        "serve": ["kserve>=0.15"],
        # The JAX backend (KERAS_BACKEND=jax), CPU build; TensorFlow stays the default backend.
        "jax": ["jax[cpu]>=0.4.36"],
        # The suite runs on the TensorFlow and the JAX backends, and serves over HTTP.
        "test": ["pytest>=8", "pytest-xdist>=3", "jax[cpu]>=0.4.36", "kserve>=0.15"],
    },
    entry_points={"console_scripts": ["keras-brt=keras_brt.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
