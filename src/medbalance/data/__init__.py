"""Data layer: sources (manifest CSV, class folders, NIfTI volumes, MedMNIST npz, phantom),
validation, resizing and intensity scaling, splits and dataset inspection."""

from medbalance.data.config import DataConfig, NiftiConfig, PhantomConfig
from medbalance.data.dataset import DataInfo, ImageDataset, IntensityInfo, Sample
from medbalance.data.sources import SOURCES, load_dataset

__all__ = [
    "SOURCES",
    "DataConfig",
    "DataInfo",
    "ImageDataset",
    "IntensityInfo",
    "NiftiConfig",
    "PhantomConfig",
    "Sample",
    "load_dataset",
]
