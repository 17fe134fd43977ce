"""The ``METRICS`` registry: every evaluation metric by name, with what it needs.

``kind`` tells :func:`medbalance.evaluation.evaluate.evaluate_datasets` how to compute it:
``features`` metrics run on extractor features (overall and per class), ``images`` metrics on
the images themselves, ``privacy`` metrics need the generator's training images and held-out real
images. The description (with its reference) is the registry's help text.
"""

from __future__ import annotations

from dataclasses import dataclass

from medbalance.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "features" | "images" | "privacy"
    description: str


METRICS: Registry[MetricSpec] = Registry("metric")


def _add(name: str, kind: str, description: str) -> None:
    METRICS.add(name, MetricSpec(name, kind, description), help=description)


_add("fd", "features", "Fréchet distance between Gaussian fits of the features (FID with inception-v3; Heusel et al. 2017)")
_add("kid", "features", "kernel inception distance: unbiased cubic-kernel MMD^2 over subsets (Bińkowski et al. 2018)")
_add("precision_recall", "features",
     "k-NN manifold precision (fidelity) and recall (coverage of real) (Kynkäänniemi et al. 2019)")
_add("density_coverage", "features", "density and coverage of real k-NN balls by synthetic samples (Naeem et al. 2020)")
_add("ms_ssim", "images", "within-class mean MS-SSIM of random pairs, synthetic vs real (diversity; Odena et al. 2017)")
_add("image_stats", "images",
     "per-channel histogram W1, mean/std, radial power spectrum, lesion stats (Baur et al. 2018, MelanoGANs)")
_add("privacy", "privacy", "DCR share vs held-out, memorisation rate, duplicates, membership-inference AUC")

DEFAULT_METRICS = ("fd", "kid", "precision_recall", "density_coverage", "ms_ssim", "image_stats")
