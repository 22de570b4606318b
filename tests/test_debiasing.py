"""The debiasing toolbox does what its papers say, on toy problems small enough to run in seconds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrlab.toolbox import debiasing as D


# ---------------------------------------------------------------------------------------------
# reweighting and resampling
# ---------------------------------------------------------------------------------------------
def test_reweighting_equalises_effective_group_weight():
    groups = np.array(["A"] * 700 + ["B"] * 250 + ["C"] * 50)
    w = D.group_weights(groups)
    assert np.isclose(w.mean(), 1.0)
    shares = D.effective_group_weight(w, groups)
    assert shares == pytest.approx({"A": 1 / 3, "B": 1 / 3, "C": 1 / 3})
    unweighted = D.effective_group_weight(np.ones(len(groups)), groups)
    assert unweighted["C"] == pytest.approx(0.05)


def test_reweighting_by_group_and_label_balances_every_cell():
    groups = np.array(["A"] * 80 + ["B"] * 20)
    labels = np.r_[np.ones(60), np.zeros(20), np.ones(5), np.zeros(15)].astype(int)
    w = D.group_weights(groups, labels)
    cells = pd.Series(w).groupby([groups, labels]).sum()
    assert np.allclose(cells.to_numpy(), len(w) / 4)


def test_balanced_sampler_draws_groups_equally_often():
    groups = np.array(["A"] * 900 + ["B"] * 100)
    draws = np.array(list(D.balanced_sampler(groups, num_samples=4000, seed=1)))
    share_b = float((draws >= 900).mean())
    assert 0.46 < share_b < 0.54
    again = np.array(list(D.balanced_sampler(groups, num_samples=4000, seed=1)))
    assert np.array_equal(draws, again)


# ---------------------------------------------------------------------------------------------
# GroupDRO raises worst-group accuracy on a toy with a minority group (Sagawa et al. 2020)
# ---------------------------------------------------------------------------------------------
def _spurious_toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label y; a spurious attribute a that equals y for 95% of samples. Feature 0 is a noisy
    core feature, feature 1 a clean copy of a: ERM leans on feature 1 and fails the minority
    groups (a != y); four groups (y, a)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.95, y, 1 - y)
    x = np.c_[(2 * y - 1) + rng.normal(0, 1.0, n), (2 * a - 1) + rng.normal(0, 0.2, n)]
    return (torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
            torch.tensor(2 * y + a))


def _fit_linear(x, y, groups, dro: D.GroupDROLoss | None, steps: int = 300) -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        losses = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y,
                                                                reduction="none")
        loss = losses.mean() if dro is None else dro(losses, groups)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _worst_group_accuracy(model, x, y, groups) -> float:
    with torch.no_grad():
        correct = ((model(x).squeeze(1) > 0).float() == y).numpy()
    return min(correct[(groups == g).numpy()].mean() for g in range(4))


@pytest.mark.slow
def test_groupdro_raises_worst_group_accuracy_over_erm():
    x, y, g = _spurious_toy(2000, seed=0)
    xt, yt, gt = _spurious_toy(2000, seed=1)
    erm = _worst_group_accuracy(_fit_linear(x, y, g, None), xt, yt, gt)
    dro = _worst_group_accuracy(_fit_linear(x, y, g, D.GroupDROLoss(4, step_size=0.05)), xt, yt, gt)
    assert erm < 0.5            # ERM follows the spurious feature and fails the minority
    assert dro > erm + 0.2      # GroupDRO trades average accuracy for the worst group


def test_groupdro_moves_weight_to_the_group_with_the_highest_loss():
    dro = D.GroupDROLoss(3, step_size=0.5)
    for _ in range(20):
        dro(torch.tensor([0.1, 0.1, 2.0, 0.5]), torch.tensor([0, 0, 1, 2]))
    assert int(torch.argmax(dro.q)) == 1
    assert float(dro.q.sum()) == pytest.approx(1.0)
    dro.eval()
    q = dro.q.clone()
    dro(torch.tensor([5.0]), torch.tensor([0]))
    assert torch.equal(q, dro.q)                     # no update outside training


# ---------------------------------------------------------------------------------------------
# gradient reversal lowers a probe's group AUC on a toy embedding (Ganin and Lempitsky 2015)
# ---------------------------------------------------------------------------------------------
def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(5, requires_grad=True)
    (D.GradientReversal(2.0)(x) * torch.arange(5.0)).sum().backward()
    assert torch.allclose(x.grad, -2.0 * torch.arange(5.0))


def _embedding_toy(n: int, seed: int):
    """Ten inputs: 0-1 carry the label, 2-4 the group (independent of the label), the rest
    noise. An encoder trained for the label keeps the group in its embedding as a by-product."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 10))
    x[:, :2] += 1.0 * (2 * y[:, None] - 1)
    x[:, 2:5] += 1.5 * (2 * group[:, None] - 1)
    return (torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
            torch.tensor(group))


def _train_encoder(adversarial: bool, x, y, group) -> nn.Module:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 8))
    head = nn.Linear(8, 1)
    adversary = D.AdversarialHead(8, 2, hidden=16, strength=1.0)
    params = [*encoder.parameters(), *head.parameters(), *adversary.parameters()]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(400):
        z = encoder(x)
        loss = nn.functional.binary_cross_entropy_with_logits(head(z).squeeze(1), y)
        if adversarial:
            loss = loss + nn.functional.cross_entropy(adversary(z), group)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return encoder


def _probe_auc(encoder, x, group, xt, gt) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        z, zt = encoder(x).numpy(), encoder(xt).numpy()
    probe = LogisticRegression(max_iter=2000).fit(z, group.numpy())
    return roc_auc_score(gt.numpy(), probe.predict_proba(zt)[:, 1])


@pytest.mark.slow
def test_gradient_reversal_lowers_the_group_auc_of_a_linear_probe():
    x, y, g = _embedding_toy(3000, seed=0)
    xt, _, gt = _embedding_toy(3000, seed=1)
    plain = _probe_auc(_train_encoder(False, x, y, g), x, g, xt, gt)
    removed = _probe_auc(_train_encoder(True, x, y, g), x, g, xt, gt)
    assert plain > 0.9                # the shortcut is encoded
    assert removed < plain - 0.15     # the adversary made it much harder to read


# ---------------------------------------------------------------------------------------------
# the network trainer, the encoding probe and fairlearn's ThresholdOptimizer
# ---------------------------------------------------------------------------------------------
def _tiny_images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    group = rng.choice(["A", "B"], n)
    y = rng.integers(0, 2, n)
    img = rng.normal(100, 10, (n, 16, 16))
    img[:, 4:12, 4:12] += 60 * y[:, None, None]                  # the "finding"
    img[:, :, :3] += 40 * (group == "B")[:, None, None]           # a group marker
    return np.clip(img, 0, 255).astype(np.uint8), y, group


@pytest.mark.parametrize("method", D.METHODS)
def test_train_debiased_learns_the_task_with_every_method(method):
    from sklearn.metrics import roc_auc_score

    from cxrlab.models import OneChannelNet, SmallCNN
    from cxrlab.train import predict

    images, y, group = _tiny_images(256, 0)
    model = OneChannelNet("tiny", SmallCNN((4, 8)), 8, 1)
    run = D.train_debiased(model, images, y, group, method, epochs=4, lr=1e-2, batch_size=32,
                           progress=False)
    assert len(run.losses) == 4 and all(np.isfinite(run.losses))
    proba = predict(model, images, task="binary")
    assert proba.shape == (256,)
    assert roc_auc_score(y, proba) > 0.95        # ranks the "finding" (4 short epochs: not calibrated)
    if method == "groupdro":
        assert run.dro_weights is not None and len(run.dro_weights) == 4


def test_train_debiased_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        D.train_debiased(nn.Linear(1, 1), np.zeros((2, 4, 4), np.uint8), [0, 1], ["A", "B"], "dann")


def test_group_encoding_reads_a_visible_group_marker():
    from cxrlab.models import OneChannelNet, SmallCNN

    images, _, group = _tiny_images(200, 1)
    model = OneChannelNet("tiny", SmallCNN((4, 8)), 8, 1)
    enc = D.group_encoding(model, images[:120], group[:120], images[120:], group[120:],
                           np.arange(80), ["A", "B"], n_boot=20)
    assert enc["auc"] > 0.9 and enc["ci_low"] <= enc["auc"] <= enc["ci_high"]


def test_threshold_optimizer_equalises_underdiagnosis_on_the_data_it_was_fitted_on():
    from cxrlab.fairness import underdiagnosis_rate

    rng = np.random.default_rng(0)
    n = 4000
    group = rng.choice(["A", "B"], n)
    healthy = rng.random(n) < 0.5
    score = 1 / (1 + np.exp(-(2 * healthy - 1 + 0.8 * (group == "B") + rng.normal(0, 1, n))))
    global_pred = score >= 0.5
    gap_before = (underdiagnosis_rate(healthy[group == "B"], global_pred[group == "B"])
                  - underdiagnosis_rate(healthy[group == "A"], global_pred[group == "A"]))
    opt = D.fit_threshold_optimizer(healthy, score, group)
    pred = opt.predict(np.c_[score], sensitive_features=group, random_state=0).astype(bool)
    gap_after = (underdiagnosis_rate(healthy[group == "B"], pred[group == "B"])
                 - underdiagnosis_rate(healthy[group == "A"], pred[group == "A"]))
    assert gap_before > 0.2
    assert abs(gap_after) < 0.05


def test_check_gap_shift_accepts_the_right_answer_and_names_the_flipped_sign(capsys):
    results = pd.DataFrame({"method": ["erm", "erm", "adversarial"], "gap_id": [0.2, 0.1, 0.0],
                            "gap_ood": [0.05, 0.05, 0.1]})
    D.check_gap_shift({"erm": -0.1, "adversarial": 0.1}, results)
    assert "Correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="sign is flipped"):
        D.check_gap_shift({"erm": 0.1, "adversarial": -0.1}, results)
    with pytest.raises(AssertionError, match="No value"):
        D.check_gap_shift({"erm": -0.1}, results)


# ---------------------------------------------------------------------------------------------
# the cache of trained models: a second call loads, a changed knob or cohort retrains
# ---------------------------------------------------------------------------------------------
def _cohort(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (48, 16, 16), dtype=np.uint8)
    return images, rng.integers(0, 2, 48), np.array(["A", "B", "C"] * 16)


def _counting(monkeypatch):
    calls = []
    real = D.train_debiased

    def counted(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("method"))
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "train_debiased", counted)
    return calls


def test_a_second_call_loads_the_cached_model_with_identical_predictions(tmp_path, monkeypatch):
    from cxrlab.train import predict

    images, labels, groups = _cohort()
    calls = _counting(monkeypatch)
    opts = dict(seed=1, channels=(4, 8), cache_dir=tmp_path, tag="demo", epochs=1, batch_size=16,
                progress=False)
    first, run1 = D.train_or_load(images, labels, groups, "groupdro", **opts)
    assert calls == ["groupdro"] and not run1.loaded
    [saved] = tmp_path.glob("demo-groupdro-seed1-*.pt")
    torch.load(saved, weights_only=True)                       # plain tensors and values only
    second, run2 = D.train_or_load(images, labels, groups, "groupdro", **opts)
    assert calls == ["groupdro"] and run2.loaded
    assert run2.losses == run1.losses and run2.dro_weights == pytest.approx(run1.dro_weights)
    assert second.task == "binary" and not second.training
    p1, p2 = predict(first, images, task="binary"), predict(second, images, task="binary")
    assert np.array_equal(p1, p2)


@pytest.mark.parametrize("change", ["method", "seed", "epochs", "channels", "labels", "images"])
def test_a_changed_knob_or_cohort_trains_again(tmp_path, monkeypatch, change):
    images, labels, groups = _cohort()
    calls = _counting(monkeypatch)
    base = dict(method="erm", seed=0, channels=(4, 8), epochs=1)
    D.train_or_load(images, labels, groups, cache_dir=tmp_path, batch_size=16, progress=False, **base)
    changed = dict(base, **{"method": {"method": "reweight"}, "seed": {"seed": 1},
                            "epochs": {"epochs": 2}, "channels": {"channels": (4, 16)}}.get(change, {}))
    if change == "labels":
        labels = 1 - labels
    if change == "images":
        images = images.copy()
        images[0, 0, 0] ^= 1
    _, run = D.train_or_load(images, labels, groups, cache_dir=tmp_path, batch_size=16, progress=False,
                             **changed)
    assert len(calls) == 2 and not run.loaded
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not list(tmp_path.glob(".*partial"))


def test_a_damaged_cache_file_is_retrained_with_a_one_line_note(tmp_path, monkeypatch, capsys):
    images, labels, groups = _cohort()
    opts = dict(channels=(4, 8), cache_dir=tmp_path, epochs=1, batch_size=16, progress=False)
    D.train_or_load(images, labels, groups, "erm", **opts)
    [saved] = tmp_path.glob("*.pt")
    saved.write_bytes(b"not a checkpoint")
    calls = _counting(monkeypatch)
    _, run = D.train_or_load(images, labels, groups, "erm", **opts)
    assert calls == ["erm"] and not run.loaded
    assert "ignoring unreadable cached model" in capsys.readouterr().out
    assert D.train_or_load(images, labels, groups, "erm", **opts)[1].loaded


def test_without_a_cache_folder_nothing_is_saved(tmp_path, monkeypatch):
    images, labels, groups = _cohort()
    monkeypatch.chdir(tmp_path)
    _, run = D.train_or_load(images, labels, groups, "adversarial", channels=(4, 8), epochs=1,
                             batch_size=16, progress=False)
    assert not run.loaded and len(run.losses) == 1 and not list(tmp_path.rglob("*.pt"))
