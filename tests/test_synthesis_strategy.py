"""Sampling strategies against imbalanced-learn's own planning on the same labels."""

from __future__ import annotations

import numpy as np
import pytest

from medbalance.errors import ConfigError
from medbalance.synthesis.strategy import (
    SamplingStrategyError,
    parse_strategy,
    plan_ratio,
    plan_sampling,
    plan_single_class,
)

imblearn_validation = pytest.importorskip("imblearn.utils._validation")


def imblearn_plan(y, strategy):
    return dict(imblearn_validation.check_sampling_strategy(strategy, np.asarray(y), "over-sampling"))


LABELS = {
    "three_classes_str": np.array(["glioma"] * 50 + ["meningioma"] * 12 + ["pituitary"] * 30),
    "three_classes_int": np.array([0] * 7 + [1] * 40 + [2] * 19),
    "tie_majority": np.array([0] * 10 + [1] * 10 + [2] * 3),
    "binary": np.array(["normal"] * 39 + ["pneumonia"] * 349),
}


@pytest.mark.parametrize("name", sorted(LABELS))
@pytest.mark.parametrize("strategy", ["auto", "minority", "not minority", "not majority", "all"])
def test_string_strategies_match_imblearn(name, strategy):
    y = LABELS[name]
    assert dict(plan_sampling(y, strategy)) == {k: int(v) for k, v in imblearn_plan(y, strategy).items()}


def test_dict_and_callable_match_imblearn():
    y = LABELS["three_classes_str"]
    target = {"meningioma": 50, "pituitary": 45}
    assert dict(plan_sampling(y, target)) == imblearn_plan(y, target)

    def fn(labels):
        u, c = np.unique(labels, return_counts=True)
        return {str(k): int(c.max()) for k in u}

    assert dict(plan_sampling(y, fn)) == imblearn_plan(y, fn)


@pytest.mark.parametrize("ratio", [0.5, 0.8, 1.0])
def test_float_matches_imblearn_binary(ratio):
    y = LABELS["binary"]
    assert dict(plan_sampling(y, ratio)) == imblearn_plan(y, ratio)


@pytest.mark.parametrize(
    "y, strategy",
    [
        (LABELS["three_classes_str"], "majority"),
        (LABELS["three_classes_str"], "balanced"),
        (LABELS["three_classes_str"], {"glioma": 10}),
        (LABELS["three_classes_str"], {"unknown": 100}),
        (LABELS["three_classes_str"], {"glioma": -1}),
        (LABELS["three_classes_str"], 0.5),
        (LABELS["binary"], 1.5),
        (LABELS["binary"], 0.0),
        (LABELS["binary"], 0.05),
        (LABELS["three_classes_str"], ["glioma"]),
    ],
)
def test_invalid_strategies_raise_like_imblearn(y, strategy):
    with pytest.raises(ValueError) as ours:
        plan_sampling(y, strategy)
    with pytest.raises(ValueError) as theirs:
        imblearn_plan(y, strategy)
    assert isinstance(ours.value, SamplingStrategyError)
    assert isinstance(ours.value, ConfigError)
    # same first words of the message as imbalanced-learn
    assert str(ours.value)[:25] == str(theirs.value)[:25]


def test_single_class_needs_two_classes():
    with pytest.raises(SamplingStrategyError, match="more than 1 class"):
        plan_sampling(np.array([1, 1, 1]), "auto")


def test_ratio_per_class_and_overall():
    y = LABELS["three_classes_int"]  # 7 / 40 / 19
    assert dict(plan_ratio(y, 0.5)) == {0: 4, 1: 20, 2: 10}  # round(3.5)=4 (banker's: 4), 20, round(9.5)=10
    assert dict(plan_ratio(y, 2.0)) == {0: 14, 1: 80, 2: 38}
    overall = plan_ratio(y, 1.0, mode="overall")
    assert sum(overall.values()) == 66 and sorted(overall.values()) == [22, 22, 22]
    assert dict(plan_ratio(y, 1.0, classes=[0])) == {0: 7}
    with pytest.raises(SamplingStrategyError, match="ratio mode"):
        plan_ratio(y, 1.0, mode="bogus")
    with pytest.raises(SamplingStrategyError, match="not present"):
        plan_ratio(y, 1.0, classes=[5])


def test_single_class_injection():
    y = LABELS["three_classes_str"]
    assert dict(plan_single_class(y, "meningioma", 25)) == {"meningioma": 25}
    with pytest.raises(SamplingStrategyError, match="not present"):
        plan_single_class(y, "nope", 3)
    with pytest.raises(SamplingStrategyError, match="integer"):
        plan_single_class(y, "glioma", -2)


def test_parse_strategy():
    assert parse_strategy("auto") == "auto"
    assert parse_strategy("not-majority") == "not majority"
    assert parse_strategy("0.5") == 0.5
    assert parse_strategy("a=10,b=20") == {"a": 10, "b": 20}
    with pytest.raises(SamplingStrategyError):
        parse_strategy("a=x")
