"""Configuration of the data layer (the ``data:`` section of every run config)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from medbalance.config import BaseConfig


class NiftiConfig(BaseConfig):
    """BraTS-style volumes: one folder per case, files found by glob patterns."""

    modalities: list[str] = Field(
        default_factory=lambda: ["*flair*.nii*", "*t1ce*.nii*"],
        description="one glob pattern per modality (channel order), matched inside each case folder",
    )
    label_pattern: Optional[str] = Field("*seg*.nii*", description="glob of the label volume; null = none")
    brain_mask_pattern: Optional[str] = Field(None, description="glob of a brain mask; null = brain is where any modality differs from its background (corner) value")
    case_glob: str = Field("**", description="glob (relative to root) of case folders to consider")
    normalization: Literal["zscore", "minmax", "percentile", "none"] = "zscore"
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_lesion_voxels: int = Field(0, ge=0, description="slices with 1..min_lesion_voxels-1 lesion voxels are dropped as ambiguous; lesion = >= max(1, this)")
    brain_only: bool = Field(True, description="keep only slices that contain brain")
    min_brain_voxels: int = Field(1, ge=1)
    slice_label: Literal["has_lesion", "case"] = Field(
        "has_lesion", description="has_lesion: class lesion/no_lesion per slice; case: label from labels_csv"
    )
    labels_csv: Optional[str] = None
    labels_csv_case_column: str = "case"
    labels_csv_label_column: str = "label"
    cache_dir: Optional[str] = Field(None, description="slice cache folder (default: ~/.cache/medbalance/nifti)")
    mode: Literal["slices", "volume"] = Field(
        "slices",
        description="slices: one 2-D sample per axial slice; volume: one 3-D sample per case, cropped to the brain "
        "and resampled to volume_shape (images trilinear, label map nearest), tensors (C, Z, Y, X)",
    )
    volume_shape: tuple[int, int, int] = Field(
        (128, 128, 64), description="volume mode: size after crop and resample, as X (left-right), Y, Z (axial)"
    )
    volume_margin: int = Field(0, ge=0, description="volume mode: voxels kept around the brain's bounding box")

    @field_validator("volume_shape")
    @classmethod
    def _positive_shape(cls, v):
        if any(int(x) < 1 for x in v):
            raise ValueError("every axis of volume_shape must be >= 1")
        return v


class PhantomConfig(BaseConfig):
    """The built-in procedural brain-MRI-like dataset (needs nothing downloaded)."""

    n: int = Field(420, ge=3, description="total number of slices")
    imbalance: list[float] = Field(default_factory=lambda: [10.0, 3.0, 1.0], description="relative class sizes")
    size: int = Field(64, ge=32, le=1024)
    seed: int = 0
    anatomy: Literal["procedural", "mni152"] = "procedural"


class DataConfig(BaseConfig):
    path: Optional[str] = Field(
        None, description="manifest CSV, class-folder root, NIfTI root, MedMNIST .npz, or 'phantom'"
    )
    source: Literal["auto", "manifest", "folders", "nifti", "medmnist", "phantom"] = "auto"
    # manifest CSV columns
    image_column: str = "image"
    mask_column: Optional[str] = "mask"
    label_column: str = "label"
    id_column: Optional[str] = "id"
    condition_column: Optional[str] = None
    group_column: Optional[str] = Field("group", description="patient/case column (used when present)")
    classes: Optional[list[str]] = Field(None, description="declared class names (order = class index)")
    class_subset: Optional[list[str]] = Field(
        None,
        description="keep only the rows of these classes (class index = order here), e.g. [melanoma] to train one "
        "unconditional generator per class (MelanoGANs); a class not in the data is an error",
    )
    mask_values: Optional[list[int]] = Field(None, description="declared label-map values; null = inferred")
    anatomy_values: Optional[list[int]] = Field(
        None, description="mask values that denote anatomy/tissue (e.g. [1] for the phantom's brain label)"
    )
    anatomy_label: Optional[int] = Field(
        None, description="add this label to background pixels inside the anatomy (from the image), as Red-GAN does"
    )
    anatomy_levels: int = Field(
        1, ge=1, le=16, description="split the added anatomy into this many labels by per-image intensity quantiles "
        "(a crude tissue map, like Shin et al.'s anatomical label maps; 1 = one label, as Red-GAN)"
    )
    anatomy_threshold: float = Field(-0.8, description="tissue = image > threshold in [-1, 1] (for anatomy_label)")
    channels: Literal["auto", 1, 3] = "auto"
    # geometry
    image_size: Optional[int] = Field(None, ge=8, description="resize to a square of this size; null = keep")
    resize_policy: Literal["pad", "stretch", "crop"] = Field(
        "pad", description="non-square images: pad to square (default), stretch, or centre-crop"
    )
    # intensity
    intensity_range: Literal["dtype", "data"] = Field(
        "dtype", description="integer images: scale from the dtype's range or the dataset's min..max"
    )
    skip_bad: bool = False
    storage: Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="image/mask files (manifest, class folders): memory = decode into float32 tensors; disk = decode "
        "once into an on-disk cache in the source's dtype and read batches lazily (bounded memory, reused across "
        "commands, rebuilt when a file changes); auto = disk when the decoded images would exceed "
        "MEDBALANCE_MEMORY_BUDGET_GB (default 2)",
    )
    cache_dir: Optional[str] = Field(
        None, description="folder of the on-disk pixel cache (default: $MEDBALANCE_CACHE or ~/.cache/medbalance)"
    )
    split: str = Field("train", description="MedMNIST split to load")
    nifti: NiftiConfig = Field(default_factory=NiftiConfig)
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)
