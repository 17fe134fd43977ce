"""The fixed judge of a trained generator, shared by ``diffusion_guidance_sweep.py`` and ``learning_curve.py``.

The same draws as ``train_all_real.conditioning_check``: ``per_class`` requested images per class, labels
``0..0, 1..1, ...``; the real images those labels (and, for mask-conditioned models, masks) are drawn from are
picked per class with seed 1234 (cycled when a class is smaller); the generator's noise is one CPU generator seeded
7 for the whole batch; a second real draw (seed 4321) gives the domain-FD floor. Scores, all from a classifier
saved by ``medbalance train-task`` (the "helper classifier"):

* class following: share of generated images the classifier assigns to the requested class (overall, per class);
* within-class pixel std: per-pixel std across the images of one class, averaged over pixels and classes, for the
  fakes and for the real images their labels were drawn from (a collapsed generator has ~0);
* domain FD: Frechet distance between the fakes and those real images in the classifier's penultimate features,
  next to the FD between those real images and the second real draw (the floor at this sample size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

REAL_SEED = 1234  # real images the requested labels (and masks) are drawn from
REF_SEED = 4321  # a second draw of real images: the FD floor
NOISE_SEED = 7  # the generator's noise


def real_picks(labels: torch.Tensor, num_classes: int, per_class: int, seed: int = REAL_SEED) -> torch.Tensor:
    """Indices of ``per_class`` real images of each class, in class order (a smaller class is cycled)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        of_c = torch.nonzero(labels == c).flatten()
        of_c = of_c[torch.randperm(len(of_c), generator=g)]
        picks.append(of_c[torch.arange(per_class) % len(of_c)])
    return torch.cat(picks)


def reference_picks(labels: torch.Tensor, num_classes: int, per_class: int, seed: int = REF_SEED) -> torch.Tensor:
    """Another ``per_class`` real images per class, drawn with replacement (the FD floor)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.nonzero(labels == c).flatten()[torch.randint(int((labels == c).sum()), (per_class,),
                                                                         generator=g)] for c in range(num_classes)])


class Judge:
    """The helper classifier and the fixed real draws of one dataset; :meth:`generate` and :meth:`score` a run."""

    def __init__(self, classifier_dir: str | Path, ds, per_class: int = 32):
        from medbalance.errors import ConfigError
        from medbalance.evaluation.fidelity import frechet_distance
        from medbalance.models.tasknets import load_task_model

        if per_class < 2:
            raise ConfigError(f"per_class={per_class}: the within-class std needs at least 2 images per class")
        self.clf, meta = load_task_model(classifier_dir)
        self.clf.eval()
        if meta.get("task", "classification") != "classification":
            raise ConfigError(f"{classifier_dir} is a {meta.get('task')} model, not a classifier")
        names = meta.get("class_names")
        if names is not None and list(names) != list(ds.class_names):
            raise ConfigError(f"the classifier's classes {list(names)} differ from the run's {list(ds.class_names)}")
        shape = meta.get("spatial_shape")
        if shape is not None and tuple(shape) != tuple(ds.spatial_shape):
            raise ConfigError(f"the classifier was trained at {tuple(shape)}, the run's images are "
                              f"{tuple(ds.spatial_shape)}")
        if any(int((ds.labels == c).sum()) == 0 for c in range(ds.num_classes)):
            raise ConfigError(f"every class needs real images for the judge; class counts {ds.class_counts()}")
        self.classifier_dir = str(classifier_dir)
        self.ds = ds
        self.per_class = per_class
        self.C = ds.num_classes
        self.labels = torch.arange(self.C).repeat_interleave(per_class)
        self.src = real_picks(ds.labels, self.C, per_class)
        real = ds.images[self.src]
        self.f_real = self.features(real)
        ref = reference_picks(ds.labels, self.C, per_class)
        self.within_class_std_real = self.within_class_std(real)
        self.fd_domain_real_ref = round(frechet_distance(real=self.f_real, synthetic=self.features(ds.images[ref])), 3)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        """The classifier's penultimate features, in chunks of 256."""
        return torch.cat([self.clf.features(x[i : i + 256]).float() for i in range(0, len(x), 256)]).numpy()

    def within_class_std(self, x: torch.Tensor) -> float:
        """Per-pixel std across the images of each class, averaged over pixels and then classes."""
        return round(float(torch.stack([x[self.labels == c].std(0).mean() for c in range(self.C)]).mean()), 4)

    @torch.no_grad()
    def generate(self, run) -> torch.Tensor:
        """The run's images for the fixed labels (masks / conditions of the matching real images when it needs
        them), with its sampling network (``run.G``: EMA when the run has one) and the fixed noise seed."""
        needs = run.method.needs
        masks = self.ds.masks[self.src] if "mask" in needs and self.ds.masks is not None else None
        conditions = self.ds.conditions[self.src] if "condition" in needs and self.ds.conditions is not None else None
        if "mask" in needs and masks is None:
            from medbalance.errors import ConfigError

            raise ConfigError(f"model {run.method.name!r} needs masks, and the run's data has none")
        kw: dict[str, Any] = {"masks": masks}
        if conditions is not None:
            kw["conditions"] = conditions
        return run.method.generate(self.labels, generator=torch.Generator().manual_seed(NOISE_SEED), G=run.G,
                                   **kw).float().cpu()

    @torch.no_grad()
    def score(self, imgs: torch.Tensor) -> dict[str, Any]:
        """Class following (overall, per class), prediction histogram, within-class std and domain FD of ``imgs``
        (generated for :attr:`labels`)."""
        from medbalance.evaluation.fidelity import frechet_distance
        from medbalance.training.task import predict_classifier

        _, pred = predict_classifier(self.clf, imgs)
        std = self.within_class_std(imgs)
        return {
            "class_acc": round(float((pred == self.labels).float().mean()), 3),
            "per_class": [round(float((pred[self.labels == c] == c).float().mean()), 3) for c in range(self.C)],
            "pred_histogram": torch.bincount(pred, minlength=self.C).tolist(),
            "within_class_std": std,
            "within_class_std_ratio": round(std / self.within_class_std_real, 3) if self.within_class_std_real > 0
            else float("nan"),
            "fd_domain": round(frechet_distance(real=self.f_real, synthetic=self.features(imgs)), 3),
        }

    def reference(self) -> dict[str, Any]:
        """What the scores are measured against (for the output files)."""
        return {"classifier": self.classifier_dir, "per_class": self.per_class, "class_names": list(self.ds.class_names),
                "within_class_std_real": self.within_class_std_real, "fd_domain_real_ref": self.fd_domain_real_ref,
                "seeds": {"real": REAL_SEED, "reference": REF_SEED, "noise": NOISE_SEED}}
