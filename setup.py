#!/usr/bin/env python
"""sed_d2: open-vocabulary semantic segmentation methods as a detectron2 project.

Prerequisites installed by hand (see README): PyTorch + torchvision for your platform, and
detectron2 from its public repository (it is on no package registry).
"""
from setuptools import find_packages, setup

setup(
    name="sed_d2",
    version="0.1.0",
    description="SED, FGAseg, DCP-CLIP, CLIP-HBD and SynSeg on detectron2",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "tools", "datasets")),
    package_data={
        "sed_d2": [
            "clip/model_configs/*.json",
            "data/datasets/class_names/*.json",
            "data/datasets/splits/*.txt",
        ],
    },
    install_requires=[
        # CLIP models and pretrained tags; we wrap it, never vendor it. 3.x has the
        # ConvNeXt configs and the batch_first text tower our dense features assume.
        "open_clip_torch>=2.24",
        # ConvNeXt trunks used by open_clip (stage/head names stable since 0.9).
        "timm>=0.9.2",
        # detectron2's own runtime needs (listed because detectron2 is installed from source).
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.11",
        "pycocotools>=2.0.2",
        "tabulate",
        "termcolor>=1.1",
        "yacs>=0.1.8",
        "cloudpickle",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "matplotlib",
        # Image I/O and colour augmentation (headless: no GUI dependencies).
        "opencv-python-headless",
        "Pillow>=9.0",
        "numpy",
        "scipy",  # .mat labels of Pascal-Context-459
        "ftfy",
        "regex",
        "tqdm",
    ],
    extras_require={"dev": ["pytest>=7", "ruff"]},
)
