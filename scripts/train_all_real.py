"""Sanity run of every registered generator's ``cpu`` preset on real data and on the phantom.

    python scripts/train_all_real.py                         # everything, ~30 min on 2 busy cores
    python scripts/train_all_real.py --datasets phantom --models dcgan,spade --budget 60
    python scripts/train_all_real.py --out /tmp/mb_real --json /tmp/mb_real/summary.json

For each dataset the script trains, via the real engine (``medbalance.training.engine.train`` with a
``RunConfig``), each model for about ``--budget`` seconds of wall time (the number of steps is set from
a short timed calibration of ``method.training_step`` on a throw-away copy), saves sample grids in the
run folder and then measures, on generated samples:

* class following: accuracy of a small classifier (trained on the real training split, reported with
  its accuracy and per-class recall on the real validation split) on images generated for a requested class. On the
  phantom the classifier is trained on an independent, class-balanced rendering (``--judge-n`` slices, another
  seed): one trained on the 420 training slices at 10:3:1 never predicted the rarest class;
* mask following (mask-conditioned models): foreground Dice between a segmentor's prediction on the
  generated image and the lesion part of the conditioning mask, next to the same segmentor's Dice on
  the real images those masks belong to;
* lesion presence (noise-driven models, where the helper segmentor's validation Dice is at least 0.3, i.e. brain,
  not the phantom): per class, the share of generated images in which that tumour segmentor finds a lesion of at
  least 10 px (at 64x64) and the median lesion area, next to the same on the real images of that class; a grid of
  fakes with the segmentor's lesions outlined is saved as ``samples/lesions_final.png``. The segmentor also fires on
  rough texture, so read the area next to the share: a generator that draws noise scores a high share with large
  areas. Next to both, the median *lesion contrast*: mean intensity inside the segmentor's lesion minus the mean in a
  3 px band around it (in [-1, 1] units; real T1c meningiomas and pituitary tumours enhance, ~0.15 at 64 px; a hit on
  flat texture has ~0).

Red-GAN needs a frozen segmentor; the one trained here (``medbalance.training.task``) is used for
both Red-GAN and the mask-following check. Brain-tumour-MRI masks are tumour-only, so the
mask-conditioned models are trained with ``data.anatomy_label: 1`` and ``data.anatomy_levels`` (default 4:
the head, taken from the image, split into intensity-quantile tissue labels); SPADE is also trained on the
tumour-only masks for comparison unless ``--no-compare-anatomy``. A third check, within-class diversity, compares
the per-pixel std across the fakes of one class with that of the real images (a collapsed generator has ~0).
Models that take a class and a mask (Red-GAN, class-conditional pix2pix) are also asked for class c with masks of
class c+1: the classifier's agreement with the requested class then measures class control beyond the mask.
``--params '{"augment": []}' --tag=-no-augment`` runs an ablation (note the ``=``: the tag starts with a dash).
``--rejudge RUN_DIR ...`` trains nothing and scores existing run folders with the current checks. ``--steps N`` trains
every model for N steps instead of a time budget (e.g. ``--precision fp32 --steps 3712`` against a bf16 run).

Sample grids and run folders stay under ``--out`` (default /tmp/mb_real): never in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARED = Path(os.environ.get("MEDBALANCE_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
BRAIN = SHARED / "brain-tumor-mri" / "labels.csv"

# model name -> params over the cpu preset; "mask" = mask-conditioned (trained on anatomy-labelled masks)
MODELS: dict[str, dict[str, Any]] = {
    "dcgan": {"params": {"conditional": True}, "mask": False},  # cpu preset: DiffAugment on (docs/models.md)
    "acgan": {"params": {}, "mask": False},
    "lapgan": {"params": {"conditional": True}, "mask": False},
    "lapgan-joint": {"params": {"conditional": True}, "mask": False},
    "pix2pix": {"params": {}, "mask": True},
    "spade": {"params": {}, "mask": True},
    "redgan": {"params": {}, "mask": True},
    "latent-diffusion": {"params": {}, "mask": False},  # cpu preset: 500 autoencoder steps first (docs/models/diffusion.md)
    "diffusion": {"params": {}, "mask": False},
    # "model": the registered model when the entry's name is a variant
    "latent-diffusion-mask": {"model": "latent-diffusion", "params": {"mask_conditioning": True}, "mask": True},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def data_cfg(name: str, anatomy: bool, image_size: int, levels: int = 1, phantom_n: int = 420, phantom_extra=None):
    from medbalance.data.config import DataConfig

    if name == "phantom":
        return DataConfig(path="phantom", phantom={"size": image_size, "n": phantom_n, **(phantom_extra or {})})
    path = str(BRAIN)
    return DataConfig(path=path, image_size=image_size, anatomy_label=1 if anatomy else None,
                      anatomy_levels=levels if anatomy else 1)


def lesion_map(masks: torch.Tensor, ds) -> torch.Tensor:
    """Boolean lesion map of label maps indexing into ``ds.mask_values`` (anatomy labels excluded)."""
    from medbalance.data.anatomy import lesion_indices

    return torch.isin(masks, torch.tensor(lesion_indices(ds.mask_values, ds.meta.get("anatomy_values"))))


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice of two boolean stacks pooled over the whole stack."""
    inter = (a & b).sum().item()
    tot = a.sum().item() + b.sum().item()
    return float("nan") if tot == 0 else 2.0 * inter / tot


def load_or_train(task: str, folder: Path, reuse: bool, train, val, epochs: int):
    """``(model, how)``: the task model saved in ``folder`` when ``reuse`` and present, else trained and saved there."""
    from medbalance.models.tasknets import load_task_model
    from medbalance.training.task import TaskConfig, train_task_model

    if reuse and (folder / "model.safetensors").is_file():
        return load_task_model(folder)[0], f"loaded from {folder}"
    cfg = TaskConfig(task=task, epochs=epochs, batch_size=32, progress=False)
    return train_task_model(train, val, cfg, out_dir=folder).model, f"{epochs} epochs"


def train_helpers(
    ds, out: Path, seg_epochs: int, cls_epochs: int, cache: Path | None = None, judge_ds=None, judge_cache: Path | None = None
) -> dict[str, Any]:
    """A classifier and (with masks) a segmentor on a stratified 85/15 split of ``ds``.

    ``judge_ds``: train the classifier (the class-following judge) on this dataset instead (the phantom: an
    independent, larger, class-balanced rendering, cached under ``judge_cache``). With ``cache``, the networks are
    loaded from ``cache/classifier`` and ``cache/segmentor`` when present (saved there by an earlier invocation
    with the same data settings) instead of retrained."""
    from medbalance.data.splits import split_train_val
    from medbalance.training.task import evaluate_task_model, predict_classifier

    train, val = split_train_val(ds, 0.15, 0)
    root = cache or out
    t0 = time.perf_counter()
    ctrain, cval = (train, val) if judge_ds is None else split_train_val(judge_ds, 0.15, 0)
    croot = (judge_cache or out / "judge") if judge_ds is not None else root
    cmodel, how = load_or_train("classification", croot / "classifier", cache is not None, ctrain, cval, cls_epochs)
    _, pred = predict_classifier(cmodel, cval)
    acc_real = float((pred == cval.labels).float().mean())
    recall = [round(float((pred[cval.labels == c] == c).float().mean()), 3) for c in range(cval.num_classes)]
    log(f"  classifier ({'independent balanced set' if judge_ds is not None else 'training split'}): {how}, real val "
        f"accuracy {acc_real:.3f}, per-class recall {recall} ({time.perf_counter() - t0:.0f} s)")
    helpers: dict[str, Any] = {"classifier": cmodel, "cls_val_acc": acc_real, "cls_val_recall": recall, "val": val}
    if ds.masks is not None:
        t0 = time.perf_counter()
        seg_dir = root / "segmentor"
        smodel, how = load_or_train("segmentation", seg_dir, cache is not None, train, val, seg_epochs)
        m = evaluate_task_model(smodel, val, "segmentation")
        log(f"  segmentor: {how}, val dice {m.get('dice')} ({time.perf_counter() - t0:.0f} s)")
        helpers.update(segmentor=smodel, seg_dir=seg_dir, seg_val=m)
    return helpers


@torch.no_grad()
def conditioning_check(res, ds, helpers: dict[str, Any], per_class: int, seg_ds=None) -> dict[str, Any]:
    """Classifier accuracy on generated images per requested class, and lesion Dice vs the input mask."""
    from medbalance.training.task import predict_classifier, predict_segmentor

    method = res.method
    g = torch.Generator().manual_seed(1234)
    C = ds.num_classes
    labels = torch.arange(C).repeat_interleave(per_class)
    picks = []
    for c in range(C):  # per_class real samples of class c (cycled when the class is smaller)
        of_c = torch.nonzero(ds.labels == c).flatten()
        of_c = of_c[torch.randperm(len(of_c), generator=g)]
        picks.append(of_c[torch.arange(per_class) % len(of_c)])
    src = torch.cat(picks)
    masks = ds.masks[src] if ("mask" in method.needs and ds.masks is not None) else None
    imgs = method.generate(labels, masks=masks, generator=torch.Generator().manual_seed(7), G=res.G)
    out: dict[str, Any] = {}
    if "mask" in method.needs:  # the engine's grids draw mask outlines over the image; save one without
        from medbalance.utils.imaging import render_grid, save_png

        cols = min(per_class, 8)
        keep = torch.cat([torch.arange(c * per_class, c * per_class + cols) for c in range(C)])
        path = Path(res.run_dir) / "samples" / "plain_final.png"
        save_png(path, render_grid(imgs[keep], C, cols))
        out["grid_plain"] = str(path)
    _, pred = predict_classifier(helpers["classifier"], imgs)
    per = [(pred[labels == c] == c).float().mean().item() for c in range(C)]
    out["class_acc_fake"] = float((pred == labels).float().mean())
    out["class_acc_fake_per_class"] = [round(x, 3) for x in per]
    out["pred_histogram"] = torch.bincount(pred, minlength=C).tolist()
    out["fake_mean"], out["fake_std"] = float(imgs.mean()), float(imgs.std())
    # within-class diversity: per-pixel std across the images of one class, averaged over pixels and classes;
    # the same for the real images the labels/masks were drawn from (a collapsed generator has ~0)
    def within_class_std(x: torch.Tensor) -> float:
        return round(float(torch.stack([x[labels == c].std(0).mean() for c in range(C)]).mean()), 4)

    out["within_class_std_fake"] = within_class_std(imgs)
    out["within_class_std_real"] = within_class_std(ds.images[src])
    # domain FD: Frechet distance in the judge classifier's penultimate features between the fakes and the real
    # images their labels were drawn from (same size, same classes), next to the FD between those real images and
    # another draw of real images of the same classes (the floor at this sample size)
    from medbalance.evaluation.fidelity import frechet_distance

    def feats(x: torch.Tensor) -> np.ndarray:
        clf = helpers["classifier"].eval()
        return torch.cat([clf.features(x[i : i + 256]).float() for i in range(0, len(x), 256)]).numpy()

    g2 = torch.Generator().manual_seed(4321)
    ref = torch.cat([torch.nonzero(ds.labels == c).flatten()[torch.randint(int((ds.labels == c).sum()), (per_class,),
                                                                             generator=g2)] for c in range(C)])
    f_real = feats(ds.images[src])
    out["fd_domain_fake"] = round(frechet_distance(real=f_real, synthetic=feats(imgs)), 3)
    out["fd_domain_real_ref"] = round(frechet_distance(real=f_real, synthetic=feats(ds.images[ref])), 3)
    if masks is not None and "label" in method.needs:
        # class control beyond the mask: request class c with masks drawn from class c+1 (mod C); a model that
        # only follows the mask scores ~0 here (the classifier then sees class c+1), one that follows the class ~1
        shift = torch.arange(len(labels)).view(C, per_class).roll(-1, dims=0).flatten()
        swapped = method.generate(labels, masks=masks[shift], generator=torch.Generator().manual_seed(7), G=res.G)
        _, pred_s = predict_classifier(helpers["classifier"], swapped)
        out["class_acc_swapped_masks"] = round(float((pred_s == labels).float().mean()), 3)
        out["mask_class_acc_swapped_masks"] = round(float((pred_s == labels[shift]).float().mean()), 3)
    if masks is not None and "segmentor" in helpers:
        sds = seg_ds if seg_ds is not None else ds  # the dataset the segmentor's labels index into
        seg = helpers["segmentor"]
        pf = predict_segmentor(seg, imgs)
        pr = predict_segmentor(seg, ds.images[src])
        target = lesion_map(masks, ds)
        out["lesion_dice_fake"] = round(dice(lesion_map(pf, sds), target), 3)
        out["lesion_dice_real"] = round(dice(lesion_map(pr, sds), target), 3)
    seg_dice = (helpers.get("seg_val") or {}).get("dice") or 0.0
    if masks is None and "segmentor" in helpers and ds.masks is not None and seg_dice >= 0.3:
        # (not on the phantom: its segmentor's Dice is ~0.1 and it marks most of the head as lesion)
        out.update(lesion_presence(imgs, ds.images[src], labels, helpers["segmentor"], seg_ds if seg_ds is not None else ds,
                                   Path(res.run_dir) / "samples" / "lesions_final.png", min(per_class, 8)))
    return out


def lesion_presence(fake, real, labels, seg, sds, grid_path: Path, cols: int, min_frac: float = 10 / 64**2) -> dict:
    """Does a noise-driven generator draw lesions? The tumour segmentor (trained on real images and masks) is run on
    the fakes and on the real images of the same classes: per class, the share of images in which it finds a lesion
    of at least ``min_frac`` of the image (10 px at 64x64) and the median lesion area (pixels). Also saves a grid of
    fakes with the segmentor's lesion outlined (a collapsed or lesion-free generator shows few outlines)."""
    from medbalance.utils.imaging import render_grid, save_png
    from medbalance.training.task import predict_segmentor

    C = int(labels.max()) + 1
    min_px = max(1, round(min_frac * fake[0, 0].numel()))
    lf, lr = lesion_map(predict_segmentor(seg, fake), sds), lesion_map(predict_segmentor(seg, real), sds)
    area_f, area_r = lf.flatten(1).sum(1).float(), lr.flatten(1).sum(1).float()
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:cols] for c in range(C)])
    save_png(grid_path, render_grid(fake[keep], C, cols, masks=lf[keep].long()))

    def per_class(images, lesions, area):
        """Per class: share of images with a lesion, median lesion area, median contrast of the found lesions."""
        share, med, contrast = [], [], []
        found, c_all = area >= min_px, lesion_contrast(images, lesions)
        for c in range(C):
            of_c = labels == c
            share.append(round(float(found[of_c].float().mean()), 3))
            med.append(float(area[of_c].median()))
            hit = of_c & found
            contrast.append(round(float(c_all[hit].median()), 3) if hit.any() else None)
        return share, med, contrast

    (sf, mf, cf), (sr, mr, cr) = per_class(fake, lf, area_f), per_class(real, lr, area_r)
    return {"lesion_share_fake": sf, "lesion_share_real": sr, "lesion_median_px_fake": mf, "lesion_median_px_real": mr,
            "lesion_contrast_fake": cf, "lesion_contrast_real": cr, "lesion_min_px": min_px, "grid_lesions": str(grid_path)}


def lesion_contrast(images: torch.Tensor, lesion: torch.Tensor, ring: int = 3) -> torch.Tensor:
    """Per image, mean intensity (first channel) inside the boolean ``(N, H, W)`` lesion map minus the mean in a
    ``ring``-px band around it (inside the head, image > -0.9 in [-1, 1]); NaN where there is no lesion. A lesion a
    reader can see differs from its surroundings (in T1c, meningiomas and pituitary tumours enhance: brighter); a
    segmentor hit on flat texture has ~0."""
    x = images[:, :1].float()
    m = lesion.unsqueeze(1).float()
    band = (torch.nn.functional.max_pool2d(m, 2 * ring + 1, 1, ring) - m) * (x > -0.9).float()

    def mean_in(w):
        return (x * w).flatten(1).sum(1) / w.flatten(1).sum(1)

    return mean_in(m) - mean_in(band)


def calibrate(cfg, ds, n: int = 8) -> float:
    """Seconds per training step of the engine's method (throw-away Trainer, same config): the median of ``n``
    timed steps after a warm-up step (a mean of 2 steps was thrown off by a neighbour process's bursts and cut
    some 300 s budgets to 200 s)."""
    from medbalance.training.engine import Trainer

    tr = Trainer(cfg, ds)
    tr.method.train()
    tr.method.training_step(tr.get_batch(0), 0)  # warm-up
    times = []
    for s in range(1, n + 1):
        t = time.perf_counter()
        tr.method.training_step(tr.get_batch(s), s)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run_model(name: str, ds, dcfg, dname: str, out: Path, args, helpers, seg_ds=None, tag: str = "") -> dict[str, Any]:
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    params = {**MODELS[name]["params"], **args.params}
    if name == "redgan":
        params["segmentor"] = str(helpers["seg_dir"])
    run_dir = out / f"{name}{tag}"
    base = dict(
        out_dir=str(run_dir),
        data=dcfg.model_dump(mode="json"),
        model={"name": MODELS[name].get("model", name), "preset": "cpu", "params": params},
        train={"steps": 10, "batch_size": args.batch_size, "precision": args.precision, "tensorboard": False,
               "log_every": 10, "seed": args.seed, "ema_decay": args.ema_decay,
               "sampling": args.sampling},
    )
    cfg = RunConfig.from_dict(base)
    if args.steps:  # a fixed step count (e.g. to compare precisions at equal steps) instead of a time budget
        steps = args.steps
        log(f"{dname}/{name}{tag}: {steps} steps (--steps)")
    else:
        t0 = time.perf_counter()
        sec_per_step = calibrate(cfg, ds)
        steps = max(20, int(args.budget / sec_per_step))
        log(f"{dname}/{name}{tag}: {sec_per_step:.2f} s/step (calibration {time.perf_counter() - t0:.0f} s) -> {steps} steps")
    base["train"].update(steps=steps, checkpoint_every=steps, sample_every=max(1, steps // 2), log_every=10)
    cfg = RunConfig.from_dict(base)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    res = train(cfg, ds)
    grids = sorted((run_dir / "samples").glob("*.png"))
    rec: dict[str, Any] = {
        "dataset": dname,
        "model": name + tag,
        "steps": steps,
        "batch_size": cfg.train.batch_size,
        "seconds": round(res.seconds, 1),
        "images_per_s": round(res.images_per_s, 1),
        "losses": {k: round(v, 4) for k, v in res.losses.items()},
        "grid": str(grids[-1]) if grids else None,
        "params": {k: v for k, v in params.items() if k != "segmentor"},
        "sampling": cfg.train.sampling,
    }
    rec.update(conditioning_check(res, ds, helpers, args.per_class, seg_ds))
    if getattr(res.method, "reports_memorization", False):  # diffusion models: near-copies of training images
        from medbalance.evaluation.diffusion_memorization import memorization_report

        mem = memorization_report(run_dir, ds, n_per_class=args.per_class)
        rec["memorization"] = {k: mem[k] for k in ("near_copy_share", "near_copies", "n_synthetic", "nn_ratio_median",
                                                   "exact_duplicates", "nn_ratio")}
        log(f"  memorisation: {mem['near_copies']}/{mem['n_synthetic']} near-copies, median NN ratio "
            f"{mem['nn_ratio_median']:.3f}, exact duplicates {mem['exact_duplicates']}")
    log(f"  done: {rec['seconds']} s, {rec['images_per_s']} img/s, class acc on fakes {rec['class_acc_fake']:.3f}"
        + (f", lesion dice fake {rec['lesion_dice_fake']} / real {rec['lesion_dice_real']}" if "lesion_dice_fake" in rec else "")
        + f", within-class std fake {rec['within_class_std_fake']} / real {rec['within_class_std_real']}"
        + f", domain FD fake {rec['fd_domain_fake']} (real vs real {rec['fd_domain_real_ref']})"
        + (f", lesion share fake {rec['lesion_share_fake']} / real {rec['lesion_share_real']}, median px fake "
           f"{rec['lesion_median_px_fake']} / real {rec['lesion_median_px_real']}, contrast fake "
           f"{rec['lesion_contrast_fake']} / real {rec['lesion_contrast_real']}" if "lesion_share_fake" in rec else "")
        + (f", class acc with swapped masks {rec['class_acc_swapped_masks']} (mask's class "
           f"{rec['mask_class_acc_swapped_masks']})" if "class_acc_swapped_masks" in rec else "")
        + f"; grid {rec['grid']}")
    return rec


def save_record(records: list[dict[str, Any]], rec: dict[str, Any], json_path: Path) -> list[dict[str, Any]]:
    """``records`` with ``rec`` replacing any earlier record of the same dataset and model, written to ``json_path``."""
    records = [r for r in records if not (r["dataset"] == rec["dataset"] and r["model"] == rec["model"])] + [rec]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"runs": records}, indent=1, default=str))
    return records


def rejudge(run_dir: str, dname: str, ds_plain, ds_anat, helpers: dict[str, Any], per_class: int) -> dict[str, Any]:
    """The checks of :func:`conditioning_check` on a saved run folder (nothing is trained); a run that cannot be
    loaded gives a record with its error."""
    from medbalance.training.run import load_run

    try:
        run = load_run(run_dir)
        rds = ds_anat if "mask" in run.method.needs and ds_anat is not None else ds_plain
        rec = {"dataset": dname, "model": Path(run_dir).name, "rejudged": str(run_dir), "steps": run.step,
               **conditioning_check(run, rds, helpers, per_class, ds_anat)}
        log(f"  {run_dir}: class following {rec['class_acc_fake']:.3f} {rec['class_acc_fake_per_class']}, "
            f"within-class std {rec['within_class_std_fake']}"
            + (f", lesion share fake {rec['lesion_share_fake']} / real {rec['lesion_share_real']}" if "lesion_share_fake" in rec else ""))
    except Exception as e:  # keep going: one unloadable run must not hide the others
        log(f"  FAILED {run_dir}: {type(e).__name__}: {e}")
        rec = {"dataset": dname, "model": Path(run_dir).name, "error": f"{type(e).__name__}: {e}"}
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="brain,phantom", help="comma list of brain, phantom")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of registered models")
    ap.add_argument("--out", default="/tmp/mb_real")
    ap.add_argument("--json", default=None, help="summary JSON (default <out>/summary.json)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of training per model (brain)")
    ap.add_argument("--phantom-budget", type=float, default=50.0, help="seconds of training per model (phantom)")
    ap.add_argument("--steps", type=int, default=None,
                    help="train every model for this many steps instead of a --budget/--phantom-budget of seconds")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--phantom-n", type=int, default=420, help="phantom.n (slices; 420 = the built-in default)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: each model preset's (train.batch_size null)")
    ap.add_argument("--seed", type=int, default=0, help="train.seed (the helpers and the checks keep their seeds)")
    ap.add_argument("--sampling", default=None, choices=["uniform", "class_balanced"],
                    help="train.sampling (default: each model preset's)")
    ap.add_argument("--ema-decay", type=float, default=None, help="train.ema_decay (EMA of G's weights for sampling)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, oversubscribed CPU 2 threads were ~10x slower)")
    ap.add_argument("--per-class", type=int, default=32, help="generated images per class for the checks")
    ap.add_argument("--seg-epochs", type=int, default=3)
    ap.add_argument("--cls-epochs", type=int, default=3)
    ap.add_argument("--params", type=json.loads, default={},
                    help='JSON dict merged into every model\'s params, e.g. \'{"augment": []}\' (an ablation)')
    ap.add_argument("--tag", default="", help="suffix of run folders and summary names (e.g. -no-augment)")
    ap.add_argument("--anatomy-levels", type=int, default=4,
                    help="brain: anatomy labels added to the tumour masks (data.anatomy_levels; 1 = one head label)")
    ap.add_argument("--helpers-cache", default="/tmp/mb_helpers",
                    help="folder where the helper classifier/segmentor are saved and reused by later invocations "
                    "with the same dataset, image size, anatomy levels and epochs ('' = always retrain)")
    ap.add_argument("--no-compare-anatomy", action="store_true", help="skip SPADE without the anatomy label")
    ap.add_argument("--judge-n", type=int, default=3000,
                    help="phantom: train the class-following classifier on an independent class-balanced phantom of "
                    "this many slices (seed 1); 0 = on the training split, as for brain")
    ap.add_argument("--rejudge", nargs="+", default=None, metavar="RUN_DIR",
                    help="train nothing: score these existing run folders (of the one dataset in --datasets) "
                    "with the current checks")
    args = ap.parse_args()
    os.environ.setdefault("MEDBALANCE_QUIET", "1")
    torch.set_num_threads(args.threads)
    from medbalance.data.sources import load_dataset

    out_root = Path(args.out)
    json_path = Path(args.json) if args.json else out_root / "summary.json"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"error: unknown models {unknown}; allowed: {', '.join(MODELS)}")
    records: list[dict[str, Any]] = []
    if json_path.is_file():  # keep records of other datasets from earlier invocations
        records = [r for r in json.loads(json_path.read_text()).get("runs", [])]
    t_all = time.perf_counter()
    for dname in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if dname not in ("brain", "phantom"):
            sys.exit(f"error: unknown dataset {dname!r}; allowed: brain, phantom")
        if dname == "brain" and not BRAIN.is_file():
            log("brain-tumor-mri not found, skipped")
            continue
        budget = args.budget if dname == "brain" else args.phantom_budget
        out = out_root / dname
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # brain: mask models use the anatomy label (tumour-only masks otherwise); phantom masks have anatomy
        anat = dname == "brain"
        dcfg_plain = data_cfg(dname, False, args.image_size, phantom_n=args.phantom_n)
        ds_plain = load_dataset(dcfg_plain)
        dcfg_anat, ds_anat = (
            (data_cfg(dname, True, args.image_size, args.anatomy_levels), None) if anat else (dcfg_plain, ds_plain)
        )
        if anat and any(MODELS[m]["mask"] for m in models):
            ds_anat = load_dataset(dcfg_anat)
        log(f"{dname}: {len(ds_plain)} images {tuple(ds_plain.images.shape[1:])}, classes {ds_plain.class_counts()}, "
            f"mask values {ds_plain.mask_values} / with anatomy {None if ds_anat is None else ds_anat.mask_values} "
            f"(loaded in {time.perf_counter() - t0:.0f} s)")
        cache = None
        if args.helpers_cache:
            key = f"{dname}-{args.image_size}px-L{args.anatomy_levels if anat and ds_anat is not None else 0}"
            if dname == "phantom" and args.phantom_n != 420:
                key += f"-n{args.phantom_n}"
            cache = Path(args.helpers_cache) / f"{key}-c{args.cls_epochs}-s{args.seg_epochs}"
        judge_ds = judge_cache = None
        if dname == "phantom" and args.judge_n > 0:
            # the class-following judge: trained on an independent, class-balanced phantom (another seed), because a
            # classifier trained on the 420 slices at 10:3:1 had per-class recall 1.00 / 0.45 / 0.00 on fresh slices
            k = ds_plain.num_classes
            judge_ds = load_dataset(data_cfg(dname, False, args.image_size, phantom_n=args.judge_n,
                                             phantom_extra={"imbalance": [1.0] * k, "seed": 1}))
            if args.helpers_cache:
                judge_cache = Path(args.helpers_cache) / f"phantom-judge-{args.image_size}px-n{args.judge_n}-k{k}-c{args.cls_epochs}"
        helpers = train_helpers(ds_anat if ds_anat is not None else ds_plain, out, args.seg_epochs, args.cls_epochs,
                                cache, judge_ds, judge_cache)
        seg_info = {"cls_val_acc": helpers["cls_val_acc"], "cls_val_recall": helpers["cls_val_recall"],
                    "judge": "independent balanced phantom" if judge_ds is not None else "training split",
                    "seg_val": helpers.get("seg_val")}
        if args.rejudge:
            for run_dir in args.rejudge:
                rec = rejudge(run_dir, dname, ds_plain, ds_anat, helpers, args.per_class)
                records = save_record(records, {**rec, "helpers_ref": seg_info}, json_path)
            continue
        a = argparse.Namespace(**{**vars(args), "budget": budget})
        for name in models:
            mask = MODELS[name]["mask"]
            ds, dcfg = (ds_anat, dcfg_anat) if mask else (ds_plain, dcfg_plain)
            try:
                rec = run_model(name, ds, dcfg, dname, out, a, helpers, seg_ds=ds_anat, tag=args.tag)
            except Exception as e:  # keep going: one failing model must not hide the others
                log(f"  FAILED {dname}/{name}: {type(e).__name__}: {e}")
                rec = {"dataset": dname, "model": name + args.tag, "error": f"{type(e).__name__}: {e}"}
            rec["anatomy_label"] = bool(mask and anat)
            rec.update(helpers_ref=seg_info)
            records = save_record(records, rec, json_path)
            if name == "spade" and anat and not args.no_compare_anatomy:
                try:
                    rec = run_model(name, ds_plain, dcfg_plain, dname, out, a, helpers, seg_ds=ds_anat, tag="-no-anatomy")
                except Exception as e:
                    log(f"  FAILED {dname}/spade-no-anatomy: {type(e).__name__}: {e}")
                    rec = {"dataset": dname, "model": "spade-no-anatomy", "error": f"{type(e).__name__}: {e}"}
                rec["anatomy_label"] = False
                rec.update(helpers_ref=seg_info)
                records = save_record(records, rec, json_path)
    log(f"all done in {time.perf_counter() - t_all:.0f} s; summary {json_path}")


if __name__ == "__main__":
    main()
