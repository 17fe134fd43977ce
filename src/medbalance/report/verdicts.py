"""Numbers into words and colours: per-arm verdict sentences, better/worse labels.

A change is significant only when its two-sided p-value is below :data:`ALPHA`. Every metric compared (recall,
precision, balanced accuracy, macro-F1, AUROC, Dice) is higher-is-better, so a significant change is "better" when
the arm's mean is above the baseline's and "worse" when below; the colour classes (``good`` green, ``bad`` red,
``neutral`` grey) always come with those words.
"""

from __future__ import annotations

from typing import Any

from medbalance.report.discover import dig
from medbalance.utils.tables import finite, fmt_num

ALPHA = 0.05
ARM_PHRASES = {"oversample": "random oversampling", "class-weight": "class-weighted training",
               "augment": "classic augmentation", "synthetic-only": "training on synthetic images only"}
# word -> CSS class; the benchmark's verdicts ("helps" / "hurts") share the colours
WORD_CLASS = {"better": "good", "worse": "bad", "no evidence": "neutral", "helps": "good", "hurts": "bad"}


def fmt_p(p: Any) -> str:
    if not finite(p):
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {float(p):.3f}" if p < 0.01 else f"p = {float(p):.2f}"


def compare(mean: Any, baseline_mean: Any, p_values: list[Any]) -> str:
    """``better`` / ``worse`` when any p is below :data:`ALPHA` (direction from the means), else ``no evidence``."""
    significant = any(finite(p) and float(p) < ALPHA for p in p_values)
    if not significant or not finite(mean) or not finite(baseline_mean) or float(mean) == float(baseline_mean):
        return "no evidence"
    return "better" if float(mean) > float(baseline_mean) else "worse"


def word_class(word: Any) -> str:
    """CSS class of a comparison word or benchmark verdict (unknown / missing: neutral)."""
    return WORD_CLASS.get(str(word), "neutral")


def _arm_subject(arm: str, cls: str | None, added: int | None) -> str:
    if not arm.startswith("real+synthetic"):
        return ARM_PHRASES.get(arm, f"arm {arm!r}")
    ratio = arm.partition("@")[2]
    how = f" ({ratio} x the real count per class)" if ratio else ""
    if cls is None or added is None:
        return f"adding synthetic images{how}"
    if added > 0:
        return f"adding {added} synthetic {cls} images{how}"
    return f"adding synthetic images of the other classes{how} (none of {cls})"


def _verdict_text(v: dict[str, Any], subject: str, label: str, seeds_n: int | None) -> str:
    a, b, p, n_pairs = fmt_num(v["mean"], 2), fmt_num(v["baseline_mean"], 2), v["p"], v["n_pairs"]
    ci = f"95 % CI {fmt_num(v['ci_low'], 2)}–{fmt_num(v['ci_high'], 2)}"
    test = (f"Wilcoxon signed-rank across {n_pairs} test cases (mean over seeds)" if v["test"] == "cases"
            else f"Wilcoxon signed-rank across {n_pairs} seeds")
    if v["significant"]:
        verb = "raised" if v["mean"] > v["baseline_mean"] else "lowered"
        text = f"{subject} {verb} {label} from {b} to {a} ({ci}), {fmt_p(p)} ({test})."
    else:
        text = (f"{subject}: no significant change in {label} ({b} with real data only vs {a}, {ci}; {fmt_p(p)}, "
                f"{test}).")
        if v["significance_impossible"]:
            text += (f" With {n_pairs if n_pairs else seeds_n} seeds the smallest attainable p-value is "
                     f"{fmt_num(v['min_attainable_p'], 3)}, so a significant result across seeds is impossible; "
                     "run more seeds.")
    return text[0].upper() + text[1:]


def make_verdicts(downstream: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain-language verdicts (with the numbers behind them) for every non-``real`` arm of a downstream summary:
    one per class (recall; segmentation: Dice) and one overall (balanced accuracy; foreground Dice). Per-class
    results use the across-test-case test when the summary has it (``_cases``), else the across-seed test."""
    summary = downstream.get("summary") or {}
    if "real" not in summary:
        return []
    per_class_key, overall_key, what = (("recall/{c}", "balanced_accuracy", "recall")
                                        if downstream.get("task", "classification") == "classification"
                                        else ("dice/{c}", "dice_foreground", "Dice"))
    seeds_n = len(dig(downstream, "config", "seeds") or []) or None
    comps = downstream.get("arm_training_sets") or {}
    real_counts = dig(comps, "real", "class_counts") or dig(downstream, "split_class_counts", "train") or {}
    min_p_seeds = summary.get("_min_attainable_p_seeds")
    arms = [a for a in summary if not a.startswith("_") and a != "real"]
    arms.sort(key=lambda a: not (a.startswith("real+synthetic") or a == "synthetic-only"))  # stable: synthetic first
    out: list[dict[str, Any]] = []
    for arm in arms:
        cases = summary[arm].get("_cases") or {}
        for cls in [*(downstream.get("class_names") or []), None]:
            metric = per_class_key.format(c=cls) if cls is not None else overall_key
            e, b = summary[arm].get(metric), summary["real"].get(metric)
            if not e or not b:
                continue
            added = (int(dig(comps, arm, "class_counts", cls) or 0) - int(real_counts[cls])
                     if cls is not None and arm in comps and cls in real_counts else None)
            # the across-test-case test when there is one, else the across-seed test
            case = cases.get(cls) if cls is not None else None
            test, t = ("cases", case) if finite(dig(case, "p")) else ("seeds", e.get("vs_real_seeds"))
            p = float(t["p"]) if finite(dig(t, "p")) else None
            n_pairs, min_p = (int(t.get("n", 0)), t.get("min_attainable_p")) if isinstance(t, dict) else (None, None)
            if test == "seeds" and isinstance(t, dict) and min_p_seeds is not None:
                min_p = min_p_seeds
            a_mean, b_mean = float(e["mean"]), float(b["mean"])
            v = {"arm": arm, "class": cls, "metric": metric, "baseline_mean": b_mean, "mean": a_mean,
                 "ci_low": float(e["ci_low"]), "ci_high": float(e["ci_high"]), "p": p, "test": test,
                 "n_pairs": n_pairs, "min_attainable_p": None if min_p is None else float(min_p),
                 "significant": bool(p is not None and p < ALPHA),
                 "significance_impossible": bool(test == "seeds" and finite(min_p) and float(min_p) >= ALPHA),
                 "direction": compare(a_mean, b_mean, [p]), "synthetic_added": added}
            label = f"{cls} {what}" if cls is not None else overall_key.replace("_", " ")
            out.append({**v, "text": _verdict_text(v, _arm_subject(arm, cls, added), label, seeds_n)})
    return out
