"""The ``METRICS`` registry: every evaluation metric by name, with what it needs.

``kind`` tells :func:`medbalance.evaluation.evaluate.evaluate_datasets` how to compute it:
``features`` metrics run on extractor features (overall and per class), ``images`` metrics on
the images themselves, ``privacy`` metrics need the generator's training images and held-out real
images. ``higher_is_better`` (None = closer to ``target`` is better) drives the report table.
"""

from __future__ import annotations

from dataclasses import dataclass

from medbalance.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "features" | "images" | "privacy"
    description: str
    keys: tuple[str, ...]  # result keys it produces
    higher_is_better: bool | None
    target: float | None = None
    reference: str = ""


METRICS: Registry[MetricSpec] = Registry("metric")


def _add(spec: MetricSpec) -> None:
    METRICS.add(spec.name, spec, help=spec.description)


_add(MetricSpec("fd", "features", "Fréchet distance between Gaussian fits of the features (FID with inception-v3)",
                ("fd",), False, reference="Heusel et al. 2017"))
_add(MetricSpec("kid", "features", "kernel inception distance: unbiased cubic-kernel MMD^2 over subsets",
                ("kid", "kid_std"), False, reference="Bińkowski et al. 2018"))
_add(MetricSpec("precision_recall", "features", "k-NN manifold precision (fidelity) and recall (coverage of real)",
                ("precision", "recall"), True, reference="Kynkäänniemi et al. 2019"))
_add(MetricSpec("density_coverage", "features", "density and coverage of real k-NN balls by synthetic samples",
                ("density", "coverage"), True, reference="Naeem et al. 2020"))
_add(MetricSpec("ms_ssim", "images", "within-class mean MS-SSIM of random pairs, synthetic vs real (diversity)",
                ("real", "synthetic", "ratio"), None, target=1.0, reference="Odena et al. 2017"))
_add(MetricSpec("image_stats", "images", "per-channel histogram W1, mean/std, radial power spectrum, lesion stats",
                ("histogram_w1", "spectrum_log10_distance"), False, reference="Baur et al. 2018 (MelanoGANs)"))
_add(MetricSpec("privacy", "privacy", "DCR share vs held-out, memorisation rate, duplicates, membership-inference AUC",
                ("dcr_share", "memorization_rate", "mia_distance_auc"), None, target=0.5))

DEFAULT_METRICS = ("fd", "kid", "precision_recall", "density_coverage", "ms_ssim", "image_stats")
