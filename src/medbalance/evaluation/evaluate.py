"""One call that answers "does it look real, is it varied, does it leak?": :func:`evaluate_datasets`.

Used by ``medbalance evaluate``, the report and the demo. Inputs are :class:`ImageDataset` objects;
the result is a JSON-able dict with a ``warnings`` list (numbers that mean little: few samples,
N below the feature dimension, mixed image sizes, ...).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.evaluation.features import FeatureCache, data_hash, default_cache_dir, cached_features
from medbalance.evaluation.metrics_registry import DEFAULT_METRICS, METRICS


def synthetic_rows(ds: ImageDataset) -> ImageDataset:
    """Only the generated rows of a (possibly mixed real + synthetic) dataset.

    ``ds.synthetic`` None (no ``synthetic`` column) means every row is synthetic.
    """
    if ds.synthetic is None:
        return ds
    idx = torch.nonzero(ds.synthetic.bool()).flatten()
    if idx.numel() == 0:
        raise DataError("the synthetic data has no rows marked synthetic", path=ds.meta.get("path"))
    return ds.subset(idx.numpy())


def align_classes(real: ImageDataset, synthetic: ImageDataset, warnings: list[str]) -> np.ndarray:
    """Synthetic labels as indices into ``real.class_names`` (-1 for classes real lacks)."""
    pos = {n: i for i, n in enumerate(real.class_names)}
    remap = np.array([pos.get(n, -1) for n in synthetic.class_names], dtype=np.int64)
    lab = remap[synthetic.labels.numpy()] if len(synthetic) else np.zeros(0, np.int64)
    unknown = sorted({synthetic.class_names[int(c)] for c in synthetic.labels.unique()} - set(real.class_names))
    if unknown:
        warnings.append(f"synthetic classes absent from the real data: {unknown} (left out of per-class metrics)")
    return lab


def match_geometry(real: ImageDataset, other: ImageDataset, what: str, warnings: list[str]) -> torch.Tensor:
    """``other``'s images at ``real``'s channel count and size (resized with a warning if needed)."""
    x = other.images
    if x.ndim != 4 or real.images.ndim != 4:
        raise DataError("evaluation handles 2D images (N, C, H, W); slice volumes first")
    if x.shape[1] != real.channels:
        raise DataError(f"{what} images have {x.shape[1]} channels, real images {real.channels}")
    if tuple(x.shape[-2:]) != real.spatial_shape:
        warnings.append(
            f"mixed image sizes: {what} {tuple(x.shape[-2:])} vs real {real.spatial_shape}; "
            f"{what} resized (bilinear, antialiased) to the real size"
        )
        x = F.interpolate(x, size=real.spatial_shape, mode="bilinear", align_corners=False, antialias=True)
    return x


def _mixed_size_warning(ds: ImageDataset, what: str, warnings: list[str]) -> None:
    sizes = ds.meta.get("original_shapes")  # {"HxW": count}, recorded by the data loaders
    if isinstance(sizes, dict) and len(sizes) > 1:
        shown = ", ".join(f"{k} ({v})" for k, v in list(sizes.items())[:4])
        warnings.append(f"{what} data came in mixed image sizes {shown}; resized on load")


def evaluate_datasets(
    *,
    real: ImageDataset,
    synthetic: ImageDataset,
    extractor: str = "pixels",
    extractor_options: dict[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    per_class: bool = False,
    privacy_train: ImageDataset | None = None,
    privacy_holdout: ImageDataset | None = None,
    score_fn: Callable[[torch.Tensor], Any] | None = None,
    train_domain_encoder: bool = False,
    domain_encoder_epochs: int = 10,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    montage_path: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    ms_ssim_pairs: int = 200,
    lesion_labels: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fidelity, diversity, image statistics and (with ``privacy_train``/``privacy_holdout``) privacy.

    ``synthetic`` may mix real and generated rows: only rows with ``synthetic`` set are evaluated.
    ``metrics``: names from :data:`METRICS` (default: all but privacy; ``privacy`` is added when
    both privacy sets are given). Returns a JSON-able dict.
    """
    from medbalance.evaluation.extractors import get_extractor
    from medbalance.training.task import train_domain_encoder as _train_enc

    t0 = time.perf_counter()
    warnings: list[str] = []
    names = list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    for n in names:
        METRICS.get(n)  # unknown names -> ConfigError listing the allowed ones
    want_privacy = privacy_train is not None or privacy_holdout is not None
    if want_privacy and (privacy_train is None or privacy_holdout is None):
        raise ConfigError("privacy needs both the generator's training images and held-out real images")
    if want_privacy and "privacy" not in names:
        names.append("privacy")
    if "privacy" in names and not want_privacy:
        raise ConfigError("the privacy metric needs --train-split and --holdout-split")

    syn = synthetic_rows(synthetic)
    if len(real) < 2 or len(syn) < 2:
        raise DataError(f"need at least 2 real and 2 synthetic images (got {len(real)} and {len(syn)})")
    syn_labels = align_classes(real, syn, warnings)
    syn_images = match_geometry(real, syn, "synthetic", warnings)
    _mixed_size_warning(real, "real", warnings)
    _mixed_size_warning(syn, "synthetic", warnings)
    real_labels = real.labels.numpy()

    result: dict[str, Any] = {
        "n_real": len(real),
        "n_synthetic": len(syn),
        "class_names": list(real.class_names),
        "real_class_counts": real.class_counts(),
        "synthetic_class_counts": {
            real.class_names[c]: int((syn_labels == c).sum()) for c in range(real.num_classes)
        },
        "image_shape": [real.channels, *real.spatial_shape],
        "metrics": names,
    }

    # ------------------------------------------------------------------ features
    cache = FeatureCache(cache_dir) if use_cache else None
    opts = dict(extractor_options or {})
    feature_metrics = [n for n in names if METRICS.get(n).kind == "features"]
    need_features = bool(feature_metrics) or "privacy" in names
    ext = None
    if need_features:
        if extractor == "domain" and not opts.get("weights") and train_domain_encoder:
            enc_train = privacy_train if privacy_train is not None else real
            root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            out = root / "domain_encoders" / data_hash(enc_train.images)[:16]
            if not (out / "model.safetensors").is_file():
                _train_enc(enc_train, out, epochs=domain_encoder_epochs)
            opts["weights"] = str(out)
        ext = get_extractor(extractor, **opts)
        result["extractor"] = {"name": extractor, "key": ext.key, "preprocessing": ext.preprocessing}

        def feats(x: torch.Tensor, what: str) -> np.ndarray:
            f, hit = cached_features(
                x, lambda imgs: ext(imgs, progress=f"{extractor} features ({what})"), ext.key, ext.preprocessing, cache
            )
            return f

        f_real = feats(real.images, "real")
        f_syn = feats(syn_images, "synthetic")
        result["extractor"]["dim"] = int(f_real.shape[1])

    # ------------------------------------------------------------------ fidelity
    if feature_metrics:
        from medbalance.evaluation.fidelity import fidelity_metrics

        kw = dict(metrics=feature_metrics, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
        fid = fidelity_metrics(real=f_real, synthetic=f_syn, **kw)
        if per_class:
            keep = syn_labels >= 0
            pc = fidelity_metrics(
                real=f_real,
                synthetic=f_syn[keep],
                real_labels=real_labels,
                synthetic_labels=syn_labels[keep],
                class_names=real.class_names,
                per_class=True,
                include_overall=False,
                **kw,
            )
            fid["per_class"] = pc["per_class"]
            fid["warnings"] += pc["warnings"]
        warnings.extend(fid.pop("warnings"))
        result["fidelity"] = fid

    # ------------------------------------------------------------------ diversity
    if "ms_ssim" in names:
        from medbalance.evaluation.diversity import ms_ssim_diversity

        keep = syn_labels >= 0
        result["diversity"] = ms_ssim_diversity(
            real=real.images,
            synthetic=syn_images[torch.as_tensor(keep)],
            real_labels=real_labels,
            synthetic_labels=syn_labels[keep],
            class_names=real.class_names,
            pairs=ms_ssim_pairs,
            seed=seed,
        )

    # ------------------------------------------------------------------ image statistics
    if "image_stats" in names:
        from medbalance.evaluation.imagestats import image_statistics

        masks_ok = real.masks is not None and syn.masks is not None and tuple(syn.masks.shape[-2:]) == real.spatial_shape
        result["image_stats"] = image_statistics(
            real=real.images,
            synthetic=syn_images,
            real_masks=real.masks if masks_ok else None,
            synthetic_masks=syn.masks if masks_ok else None,
            lesion_labels=lesion_labels,
        )

    # ------------------------------------------------------------------ privacy
    if "privacy" in names:
        from medbalance.evaluation.privacy import privacy_metrics

        assert privacy_train is not None and privacy_holdout is not None and ext is not None
        tr_images = match_geometry(real, privacy_train, "training", warnings)
        ho_images = match_geometry(real, privacy_holdout, "held-out", warnings)
        overlap = set(privacy_train.ids) & set(privacy_holdout.ids)
        if overlap:
            raise DataError(f"{len(overlap)} ids are in both the training and the held-out split (e.g. {sorted(overlap)[0]!r})")
        if len(privacy_holdout) < 100:
            warnings.append(
                f"privacy: only {len(privacy_holdout)} held-out images; the 1st-percentile reference is unreliable"
            )
        f_tr = cached_features(tr_images, lambda x: ext(x, progress="features (train)"), ext.key, ext.preprocessing, cache)[0]
        f_ho = cached_features(ho_images, lambda x: ext(x, progress="features (held-out)"), ext.key, ext.preprocessing, cache)[0]
        result["privacy"] = privacy_metrics(
            train=tr_images,
            holdout=ho_images,
            synthetic=syn_images,
            train_features=f_tr,
            holdout_features=f_ho,
            synthetic_features=f_syn,
            score_fn=score_fn,
            montage_path=montage_path,
            synthetic_ids=list(syn.ids),
            train_ids=list(privacy_train.ids),
        )

    result["warnings"] = warnings
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(scope, metric, value)`` rows for a table (CLI, report)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows: list[tuple[str, str, str]] = []
    fid = result.get("fidelity")
    if fid:
        scopes = [("overall", fid["overall"])] + [(f"class {k}", v) for k, v in (fid.get("per_class") or {}).items()]
        for scope, d in scopes:
            for key in ("fd", "kid", "precision", "recall", "density", "coverage"):
                if key in d:
                    rows.append((scope, key, fmt(d[key])))
    div = result.get("diversity")
    if div:
        rows.append(("overall", "ms_ssim real", fmt(div["real"])))
        rows.append(("overall", "ms_ssim synthetic", fmt(div["synthetic"])))
        for k, v in div["per_class"].items():
            rows.append((f"class {k}", "ms_ssim syn/real", fmt(v["ratio"])))
    st = result.get("image_stats")
    if st:
        rows.append(("overall", "histogram W1 (per channel)", ", ".join(fmt(v) for v in st["histogram_w1"])))
        rows.append(("overall", "mean real/syn", ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(st["real_mean"], st["synthetic_mean"]))))
        rows.append(("overall", "std real/syn", ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(st["real_std"], st["synthetic_std"]))))
        rows.append(("overall", "spectrum |dlog10|", fmt(st["spectrum_log10_distance"])))
    pv = result.get("privacy")
    if pv:
        for space in ("pixels", "features"):
            if space in pv:
                d = pv[space]
                rows.append((f"privacy {space}", "DCR share (0.5 ideal)", fmt(d["dcr_share"])))
                rows.append((f"privacy {space}", "memorisation rate", fmt(d["memorization_rate"])))
                rows.append((f"privacy {space}", "MIA distance AUC", fmt(d["mia_distance_auc"])))
        rows.append(("privacy pixels", "exact duplicates", fmt(pv["pixels"]["exact_duplicates"])))
        if "mia_score_auc" in pv:
            rows.append(("privacy", "MIA score AUC", fmt(pv["mia_score_auc"])))
    return rows
