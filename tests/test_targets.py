"""The registries of targets and tasks: one answer for every target's task, classes and values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.core.targets import TARGETS, TASKS, target_spec, task_spec


def test_every_target_has_a_known_task_and_encoding():
    for spec in TARGETS.values():
        assert spec.task in TASKS and spec.encoding


def test_values_follow_the_stated_encoding():
    df = pd.DataFrame({"race": ["B", None, "A"], "sex": ["M", "F", None],
                       "age": [40.0, None, 7.0], "no_finding": [True, False, None],
                       "finding_effusion": [False, True, None]})
    findings = ["finding_effusion"]
    assert target_spec("race").values(df, ["A", "B"], findings).tolist() == [1, -1, 0]
    assert target_spec("sex").values(df, [], findings).tolist() == [1, 0, -1]
    assert target_spec("no_finding").values(df, [], findings).tolist() == [1, 0, -1]
    ages = target_spec("age").values(df, [], findings)
    assert ages[0] == 40.0 and np.isnan(ages[1])
    multi = target_spec("findings").values(df, [], findings)
    assert multi.shape == (3, 1) and np.isnan(multi[2, 0])
    assert target_spec("findings").class_names([], findings) == ["effusion"]


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of race, sex"):
        target_spec("ethnicity")
    with pytest.raises(ValueError, match="unknown task 'ordinal'"):
        task_spec("ordinal")


def test_task_specs_train_and_read_consistently():
    out = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(task_spec("multiclass").to_predictions(out).sum(), torch.tensor(1.0))
    assert task_spec("binary").to_predictions(torch.tensor([[0.0]])).item() == 0.5
    assert task_spec("multilabel").known(np.array([[np.nan, np.nan], [1.0, np.nan]])).tolist() == [False, True]
    assert task_spec("binary").typed(np.array([1, 0])).dtype == np.float32
    assert task_spec("multiclass").typed(np.array([1, 0])).dtype == np.int64
    loss = task_spec("multilabel").loss()(torch.zeros(1, 2), torch.tensor([[1.0, float("nan")]]))
    assert torch.isfinite(loss)
