"""Install mimir_fast. `kernels/` ships as `mimir_fast.kernels`: an unrelated PyPI package owns `kernels`."""
from setuptools import setup

setup(
    name="mimir_fast",
    version="0.1.0",
    description="Fast, trustworthy MIMIR (adversarial masked-autoencoder) pretraining for robust ViTs",
    python_requires=">=3.10",
    packages=[
        "mimir_fast",
        "mimir_fast.ops",
        "mimir_fast.doctor",
        "mimir_fast.attacks",
        "mimir_fast.data",
        "mimir_fast.train",
        "mimir_fast.evaluate",
        "mimir_fast.demo",
        "mimir_fast.purify",
        "mimir_fast.methods",
        "mimir_fast.kernels",
    ],
    package_dir={"mimir_fast.kernels": "kernels"},
    # Ranges, not pins: the GPU machines carry torch 2.11 / triton 3.6. requirements.txt holds the exact pins.
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pillow",
        "scikit-learn",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark", "timm>=1.0"], "dali": ["nvidia-dali-cuda130>=2.4"]},
    entry_points={"console_scripts": ["mimir-fast=mimir_fast.cli:main"]},
)
