# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Metrics against scikit-learn / numpy / scikit-image oracles, edge cases and MONAI engine use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from monai_diffad.metrics import (
    DICE_THRESHOLDS,
    AUPRCMetric,
    AUROCMetric,
    BestDiceMetric,
    BoxDetectionMetric,
    ImageAUROCMetric,
    ReconstructionMetric,
    StratifiedMetric,
    auprc,
    auroc,
    best_dice,
    distinct_value_counts,
    image_auroc,
    image_threshold_at_fpr,
    lesion_size_class,
    lesion_size_classes,
    pool_pixels,
    roc_curve_from_counts,
    size_strata,
)

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_set(
    seed: int = 0, shape: tuple[int, ...] = (6, 1, 32, 32), quantum: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps in [0, 1] that are higher on the lesions, labels and a random "brain" mask.

    ``quantum`` rounds the maps to its multiples (many ties, values exactly on the Dice thresholds).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(shape, generator=g) < 0.15
    maps = torch.where(labels, 0.35 + 0.65 * torch.rand(shape, generator=g), 0.7 * torch.rand(shape, generator=g))
    if quantum is not None:
        maps = (torch.round(maps / quantum) * quantum).clamp(0, 1)
    mask = torch.rand(shape, generator=g) < 0.8
    return maps, labels, mask


def dice_oracle(maps: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Best Dice by brute force: ``maps >= t`` for each threshold, first maximum."""
    best, best_t = -1.0, float("nan")
    for t in DICE_THRESHOLDS.tolist():
        pred = maps >= t
        tp = (pred & labels).sum().item()
        dice = 2 * tp / (pred.sum().item() + labels.sum().item())
        if dice > best:
            best, best_t = dice, t
    return best, best_t


# ----------------------------------------------------------------------------------------- input checks


def test_pool_pixels_selects_masked_pixels():
    maps, labels, mask = random_set()
    values, positives = pool_pixels(maps, labels, mask)
    assert torch.equal(values, maps[mask]) and torch.equal(positives, labels[mask])
    # a (B, 1, H, W) mask broadcasts over channels
    maps2 = torch.cat([maps, maps], dim=1)
    values2, _ = pool_pixels(maps2, torch.cat([labels, labels], dim=1), mask)
    assert values2.numel() == 2 * values.numel()


@pytest.mark.parametrize(
    "maps, labels, mask, error",
    [
        (torch.full((1, 1, 4, 4), 1.0001), torch.zeros(1, 1, 4, 4), None, ValueError),  # above 1: raise, not clip
        (torch.full((1, 1, 4, 4), -1e-6), torch.zeros(1, 1, 4, 4), None, ValueError),  # below 0
        (torch.full((1, 1, 4, 4), float("nan")), torch.zeros(1, 1, 4, 4), None, ValueError),
        (torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0), None, ValueError),  # non-binary labels
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 3), None, ValueError),  # shape mismatch
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 3, 3), ValueError),  # bad mask shape
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5), ValueError),
        ([[0.1, 0.2]], torch.zeros(1, 2), None, TypeError),
    ],
)
def test_bad_inputs_raise(maps, labels, mask, error):
    with pytest.raises(error):
        pool_pixels(maps, labels, mask)
    with pytest.raises(error):
        best_dice(maps, labels, mask)


def test_numpy_inputs_match_tensors():
    maps, labels, mask = random_set(1)
    assert best_dice(maps.numpy(), labels.numpy(), mask.numpy()) == best_dice(maps, labels, mask)
    assert auprc(maps.numpy(), labels.numpy().astype(np.uint8)) == auprc(maps, labels)


# ------------------------------------------------------------------------------------------------- Dice


@pytest.mark.parametrize("quantum", [None, 0.005, 0.01])
def test_best_dice_matches_brute_force(quantum):
    maps, labels, mask = random_set(2, quantum=quantum)
    dice, threshold = best_dice(maps, labels)
    ref_dice, ref_t = dice_oracle(maps, labels)
    assert dice == pytest.approx(ref_dice, abs=1e-12) and threshold == ref_t
    dice, threshold = best_dice(maps, labels, mask)
    ref_dice, ref_t = dice_oracle(maps[mask], labels[mask])
    assert dice == pytest.approx(ref_dice, abs=1e-12) and threshold == ref_t


def test_best_dice_uses_greater_equal_on_ties():
    # a lesion exactly at 0.3 and background just below: only ">=" separates them at t = 0.3
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    labels[..., :2, :2] = True
    for dtype in (torch.float32, torch.float64):  # thresholds are compared in the maps' own dtype
        maps = torch.where(labels, torch.tensor(0.3, dtype=dtype), torch.tensor(0.29, dtype=dtype))
        assert best_dice(maps, labels) == (1.0, 0.3)


def test_dice_of_mask_with_itself_is_one():
    _, labels, _ = random_set(3)
    dice, threshold = best_dice(labels.float(), labels)
    assert dice == 1.0 and threshold == 0.01  # t = 0 predicts every pixel; 0.01 is the lowest perfect one


def test_dice_edge_cases():
    labels = torch.zeros(2, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match="Dice is undefined"):
        dice, threshold = best_dice(torch.rand(2, 1, 8, 8), labels)
    assert np.isnan(dice) and np.isnan(threshold)
    labels[0, 0, :3, :3] = 1
    # a constant map predicts all or nothing: best at the lowest threshold, Dice = 2P / (P + all)
    dice, threshold = best_dice(torch.full((2, 1, 8, 8), 0.5), labels)
    assert threshold == 0.0 and dice == pytest.approx(2 * 9 / (9 + 128))
    # an all-zero map: every threshold above 0 predicts nothing (Dice 0)
    assert best_dice(torch.zeros(2, 1, 8, 8), labels) == (pytest.approx(2 * 9 / (9 + 128)), 0.0)


def test_best_dice_metric_accumulates_like_one_shot():
    maps, labels, mask = random_set(4, quantum=0.01)
    metric = BestDiceMetric(return_threshold=True)
    for i in range(0, 6, 2):
        batch_counts = metric(maps[i : i + 2], labels[i : i + 2], mask=mask[i : i + 2])
        assert batch_counts.shape == (1, 2, 102)
    assert metric.aggregate() == best_dice(maps, labels, mask)
    assert metric.get_buffer().shape == (1, 2, 102)  # one running total, not one entry per batch
    # decollated lists (what MONAI handlers pass) give the same counts
    listed = BestDiceMetric(return_threshold=True)
    listed(list(maps), list(labels), mask=list(mask))
    assert torch.equal(listed.counts(), metric.counts())
    # reset starts afresh
    metric.reset()
    assert int(metric.counts().sum()) == 0
    metric(maps[:3], labels[:3])
    assert metric.aggregate() == best_dice(maps[:3], labels[:3])
    dice_only = BestDiceMetric()
    dice_only(maps[:3], labels[:3])
    assert dice_only.aggregate() == best_dice(maps[:3], labels[:3])[0]


def test_flagged_fraction():
    maps, labels, mask = random_set(5, quantum=0.01)
    metric = BestDiceMetric()
    metric(maps, labels, mask=mask)
    dice, threshold = best_dice(maps, labels, mask)
    assert metric.aggregate() == dice
    neg = ~labels & mask
    assert metric.flagged_fraction() == pytest.approx((maps[neg] >= threshold).double().mean().item(), abs=1e-12)
    assert metric.flagged_fraction(0.5) == pytest.approx((maps[neg] >= 0.5).double().mean().item(), abs=1e-12)
    with pytest.raises(ValueError):
        metric.flagged_fraction(0.505)


# -------------------------------------------------------------------------------------------- AUPRC/AUROC


@pytest.mark.parametrize("quantum", [None, 0.05])
def test_exact_ranking_matches_sklearn(quantum):
    maps, labels, mask = random_set(6, quantum=quantum)
    for m in (None, mask):
        sel = torch.ones_like(mask) if m is None else m
        y, s = labels[sel].numpy(), maps[sel].numpy()
        assert auprc(maps, labels, m) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert auroc(maps, labels, m) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_binned_ranking_close_to_sklearn():
    maps, labels, _ = random_set(7, shape=(8, 1, 64, 64))
    y, s = labels.flatten().numpy(), maps.flatten().numpy()
    ap, auc = average_precision_score(y, s), roc_auc_score(y, s)
    assert abs(auprc(maps, labels, n_bins=10_000) - ap) < 1e-3
    assert abs(auroc(maps, labels, n_bins=10_000) - auc) < 1e-3
    # default metrics (10^5 bins) are closer still
    ap_metric, auc_metric = AUPRCMetric(), AUROCMetric()
    ap_metric(maps, labels)
    auc_metric(maps, labels)
    assert abs(ap_metric.aggregate() - ap) < 1e-4 and abs(auc_metric.aggregate() - auc) < 1e-4


def test_binned_ranking_exact_when_one_value_per_bin():
    g = torch.Generator().manual_seed(8)
    labels = torch.rand(4, 1, 32, 32, generator=g) < 0.2
    high, low = torch.randint(60, 256, labels.shape, generator=g), torch.randint(0, 200, labels.shape, generator=g)
    maps = torch.where(labels, high, low)
    maps = maps.float() / 255  # 8-bit maps: multiples of 1/255, at most one per bin of 1/256
    y, s = labels.flatten().numpy(), maps.flatten().numpy()
    assert auprc(maps, labels, n_bins=256) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert auroc(maps, labels, n_bins=256) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ranking_metrics_accumulate_like_one_shot():
    maps, labels, mask = random_set(9)
    for metric_cls, fn in ((AUPRCMetric, auprc), (AUROCMetric, auroc)):
        metric = metric_cls(n_bins=1000)
        for i in range(6):
            metric(maps[i : i + 1], labels[i : i + 1], mask=mask[i : i + 1])
        assert metric.aggregate() == pytest.approx(fn(maps, labels, mask, n_bins=1000), abs=1e-12)
        assert metric.get_buffer().shape == (1, 2, 1000)
        metric.reset()
        assert metric.get_buffer() is None
        metric(maps[:2], labels[:2])
        assert metric.aggregate() == pytest.approx(fn(maps[:2], labels[:2], n_bins=1000), abs=1e-12)


def test_ranking_edge_cases():
    maps = torch.rand(2, 1, 8, 8)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(auprc(maps, torch.zeros(2, 1, 8, 8)))
    with pytest.warns(RuntimeWarning):
        assert np.isnan(auroc(maps, torch.zeros(2, 1, 8, 8)))
    with pytest.warns(RuntimeWarning):
        assert np.isnan(auroc(maps, torch.ones(2, 1, 8, 8)))
    assert auprc(maps, torch.ones(2, 1, 8, 8)) == 1.0  # as scikit-learn: every prediction is right
    with pytest.warns(RuntimeWarning):
        assert np.isnan(AUPRCMetric().aggregate())  # nothing accumulated
    # a constant map ranks nothing: AUROC 1/2, AP = prevalence (scikit-learn agrees)
    labels = torch.zeros(2, 1, 8, 8)
    labels[0, 0, :4] = 1
    constant = torch.full_like(labels, 0.25)
    assert auroc(constant, labels) == 0.5 and auroc(constant, labels, n_bins=100) == 0.5
    assert auprc(constant, labels) == pytest.approx(average_precision_score(labels.flatten(), constant.flatten()))


def test_curves():
    maps, labels, _ = random_set(10, quantum=0.02)
    fpr, tpr = roc_curve_from_counts(distinct_value_counts(maps.flatten(), labels.flatten()))
    ref_fpr, ref_tpr, _ = roc_curve(labels.flatten(), maps.flatten(), drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), ref_tpr, atol=1e-12)
    metric = AUPRCMetric(n_bins=50)
    metric(maps, labels)
    precision, recall = metric.curve()
    assert precision[0] == 1 and recall[0] == 0 and recall[-1] == 1
    assert precision[-1] == pytest.approx(labels.double().mean().item())


# ------------------------------------------------------------------------------------------ image AUROC


def test_image_auroc_matches_sklearn():
    g = torch.Generator().manual_seed(11)
    labels = torch.rand(40, generator=g) < 0.5
    scores = torch.round(torch.randn(40, generator=g) * 3) + 2 * labels  # ties, any range
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    metric = ImageAUROCMetric()
    metric(scores[:25].unsqueeze(1), labels[:25].unsqueeze(1))
    metric(list(scores[25:]), list(labels[25:]))  # decollated
    assert metric.aggregate() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    metric.reset()
    with pytest.warns(RuntimeWarning):
        assert np.isnan(metric.aggregate())
    with pytest.raises(ValueError):
        image_auroc(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError):
        image_auroc(torch.tensor([0.0, float("inf")]), torch.tensor([0, 1]))


# ------------------------------------------------------------------------- image threshold at healthy FPR


def image_threshold_oracle(scores: list[float], fpr: float) -> float:
    """The lowest candidate (a score, or just above the highest) reached by at most ``fpr`` of the scores."""
    candidates = sorted(set(scores)) + [np.nextafter(max(scores), np.inf)]
    return next(float(t) for t in candidates if sum(s >= t for s in scores) / len(scores) <= fpr)


@pytest.mark.parametrize(
    "scores, fpr, expected",
    [
        (list(range(20)), 0.05, 19.0),  # k = 1: the highest score, reached by 1 of 20 images
        (list(range(20)), 0.10, 18.0),  # k = 2
        (list(range(20)), 0.0999, 19.0),  # k = floor(1.998) = 1
        (list(range(19, -1, -1)), 0.05, 19.0),  # the order does not matter
        ([0.1, 0.2, 0.3, 0.3, 0.3], 0.6, 0.3),  # k = 3: exactly the three tied scores reach it
        ([0.1, 0.2, 0.3, 0.3, 0.3], 0.8, 0.2),  # k = 4
        ([0.1, 0.2, 0.2, 0.3, 0.4], 0.6, 0.3),  # a tie at the cut (s[n-k] == s[n-k-1] = 0.2): the next score up
        ([0.5, 0.5, 0.5, 0.5], 0.5, float(np.nextafter(0.5, 1.0))),  # all tied: nothing may be reached
        (list(range(100)), 0.29, 71.0),  # 0.29 * 100 is 28.999... in floats; 29 of 100 is still <= 0.29
    ],
)
def test_image_threshold_at_fpr_hand_made(scores, fpr, expected):
    threshold = image_threshold_at_fpr(torch.tensor(scores, dtype=torch.float64), fpr)
    assert threshold == expected == image_threshold_oracle(scores, fpr)
    assert sum(s >= threshold for s in scores) / len(scores) <= fpr


def test_image_threshold_at_fpr_k_zero_is_just_above_the_maximum():
    # fewer than 1 / fpr images: not one healthy image may be called anomalous
    scores = torch.tensor([0.25, 0.75, 0.5])
    threshold = image_threshold_at_fpr(scores, 0.05)
    assert threshold > 0.75 and threshold == np.nextafter(np.float64(0.75), np.inf)
    assert not bool((scores.double() >= threshold).any())
    assert image_threshold_at_fpr(np.array([0.3]), 0.99) == np.nextafter(0.3, 1.0)  # n = 1: k = floor(0.99) = 0


def test_image_threshold_at_fpr_matches_oracle_on_random_scores():
    rng = np.random.default_rng(5)
    for n in (1, 7, 20, 63):
        scores = np.round(rng.beta(2, 6, size=n), 2)  # many ties
        for fpr in (0.01, 0.05, 0.2, 0.5, 0.95):
            threshold = image_threshold_at_fpr(scores[:, None], fpr)  # (N, 1) and numpy are accepted
            assert threshold == image_threshold_oracle(scores.tolist(), fpr), (n, fpr)
    # a larger tolerated share can only lower the threshold
    scores = torch.rand(50, generator=torch.Generator().manual_seed(0))
    values = [image_threshold_at_fpr(scores, fpr) for fpr in (0.02, 0.05, 0.1, 0.3)]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4


@pytest.mark.parametrize(
    "scores, fpr, error, match",
    [
        (torch.tensor([0.1, 0.2]), 0.0, ValueError, "fpr"),
        (torch.tensor([0.1, 0.2]), 1.0, ValueError, "fpr"),
        (torch.tensor([0.1, 0.2]), -0.1, ValueError, "fpr"),
        (torch.tensor([0.1, 0.2]), True, ValueError, "fpr"),
        (torch.tensor([]), 0.05, ValueError, "non-empty"),
        (torch.tensor(0.5), 0.05, ValueError, "non-empty"),
        (torch.zeros(3, 2), 0.05, ValueError, "shape"),
        (torch.tensor([0.1, float("nan")]), 0.05, ValueError, "NaN"),
        (torch.tensor([0.1, float("inf")]), 0.05, ValueError, "NaN"),
        ([0.1, 0.2], 0.05, TypeError, "scores"),
    ],
)
def test_image_threshold_at_fpr_rejects_bad_input(scores, fpr, error, match):
    with pytest.raises(error, match=match):
        image_threshold_at_fpr(scores, fpr)


# ----------------------------------------------------------------------------------------------- strata


def area_labels(counts: list[int], size: int = 128) -> torch.Tensor:
    labels = torch.zeros(len(counts), 1, size * size)
    for i, n in enumerate(counts):
        labels[i, 0, :n] = 1
    return labels.reshape(len(counts), 1, size, size)


def test_lesion_size_classes_at_bounds():
    counts = [0, 1, 3, 4, 71, 72, 570, 571, 10000, 10001]
    expected = [0, -1, -1, 1, 1, 2, 2, 3, 3, -1]
    assert lesion_size_classes(area_labels(counts)).tolist() == expected
    assert [lesion_size_class(lab) for lab in area_labels(counts)] == expected
    # 64 x 64 labels scored at the 128 x 128 bounds: 18 pixels are 72 at 128^2
    assert lesion_size_class(area_labels([18], 64)[0], area_scale=4) == 2
    assert {k: v.tolist() for k, v in size_strata(torch.tensor(expected)).items()} == {
        "none": [0],
        "small": [3, 4],
        "medium": [5, 6],
        "large": [7, 8],
    }
    with pytest.raises(ValueError):
        lesion_size_classes(area_labels([1]), bounds=(3, 71, 50, 10000))


def test_stratified_metric_matches_subsets():
    g = torch.Generator().manual_seed(12)
    labels = area_labels([0, 40, 300, 900, 0, 60], size=64).bool()
    noise = torch.rand(labels.shape, generator=g)
    maps = torch.where(labels, 0.5 + 0.5 * noise, 0.6 * noise)
    mask = torch.ones_like(labels)
    mask[..., -4:, :] = False  # the lesions fill the first rows
    metric = StratifiedMetric(lambda: BestDiceMetric(return_threshold=True))
    classes = metric(maps[:3], labels[:3], mask=mask[:3])
    metric(maps[3:], labels[3:], mask=mask[3:])
    assert classes.tolist() == [0, 1, 2]
    with pytest.warns(RuntimeWarning, match="Dice is undefined"):  # the lesion-free stratum
        result = metric.aggregate()
    assert result["all"] == best_dice(maps, labels, mask)
    for name, idx in (("small", [1, 5]), ("medium", [2]), ("large", [3])):
        assert result[name] == best_dice(maps[idx], labels[idx], mask[idx])
    assert np.isnan(result["none"][0])  # lesion-free stratum: Dice undefined ...
    neg = mask[[0, 4]] & ~labels[[0, 4]]  # ... but its flagged share is
    expected = (maps[[0, 4]][neg] >= 0.5).double().mean().item()
    assert metric.metrics["none"].flagged_fraction(0.5) == pytest.approx(expected)
    # explicit size classes override the labels
    metric.reset()
    metric(maps, labels, size_class=[3, 3, 3, 3, 3, 3])
    with pytest.warns(RuntimeWarning):  # the empty strata
        assert metric.aggregate()["large"] == best_dice(maps, labels)
    with pytest.raises(ValueError):
        metric(maps, labels, size_class=[1, 2])


# ------------------------------------------------------------------------------------------------ boxes


def box_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Two healthy and three box images, 8 x 8, with known TP/FP at th = 0.35 .. 0.4 (see test)."""
    maps = torch.zeros(5, 1, 8, 8)
    boxes = torch.zeros(5, 1, 8, 8)
    maps[0, 0, 0, :8] = 0.35  # healthy: 12.5 % of pixels at 0.35; the other healthy image is all 0
    # image 2: 2x2 box at 0.9 (TP); 8 neg pixels at 0.5 -> FP = floor(4.0 / 3.6) = 1; faint 0.3 noise zeroed
    boxes[2, 0, :2, :2] = 1
    maps[2, 0, :2, :2] = 0.9
    maps[2, 0, 4, :] = 0.5
    maps[2, 0, 5:, :] = 0.3
    # image 3: 10-pixel box, one pixel survives = exactly 10 % -> not a TP
    boxes[3, 0, 0, :5] = 1
    boxes[3, 0, 1, :5] = 1
    maps[3, 0, 0, 0] = 0.8
    # image 4: 2x2 box at 0.6 (TP); 30 neg pixels at 1.0 -> FP = min(10, floor(30 / 2.4)) = 10
    boxes[4, 0, :2, :2] = 1
    maps[4, 0, :2, :2] = 0.6
    maps[4, 0, 4:, :].view(-1)[:30] = 1.0
    return maps, boxes


@pytest.mark.parametrize("n_thresholds, threshold", [(10, 0.4), (1000, 0.35)])
def test_box_metric_handcrafted(n_thresholds, threshold):
    maps, boxes = box_example()
    metric = BoxDetectionMetric(n_thresholds=n_thresholds)
    metric(maps[:3], boxes[:3])
    metric(maps[3:], boxes[3:])
    result = metric.aggregate()
    # mean healthy share is 6.25 % while 0.35 survives, 0 once th >= 0.35 (values equal to th are zeroed)
    assert result["threshold"] == pytest.approx(threshold) and result["healthy_fraction"] == 0
    p = [0.5, 0.0, 1 / 11]
    f1 = [2 * 0.5 / 1.5, 0.0, 2 * (1 / 11) / (1 / 11 + 1)]
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(sum(p) / 3)
    assert result["f1"] == pytest.approx(sum(f1) / 3)
    assert metric.get_buffer()[0].shape == (1, 4, n_thresholds)  # running sums, not per image


def test_box_metric_against_loop_oracle():
    g = torch.Generator().manual_seed(13)
    n, k = 8, 50
    maps = torch.rand(n, 1, 16, 16, generator=g) ** 3
    boxes = torch.zeros(n, 1, 16, 16)
    for i in range(3, n):
        r, c = torch.randint(0, 12, (2,), generator=g).tolist()
        boxes[i, 0, r : r + 4, c : c + 4] = 1
        maps[i, 0, r : r + 4, c : c + 4] = torch.rand(4, 4, generator=g)
    neg = torch.rand(n, 1, 16, 16, generator=g) < 0.9
    neg &= boxes == 0
    metric = BoxDetectionMetric(n_thresholds=k)
    metric(maps, boxes, mask=neg)
    result = metric.aggregate()
    listed = BoxDetectionMetric(n_thresholds=k)
    listed(list(maps), list(boxes), mask=list(neg))  # decollated items, each with its own mask
    assert listed.aggregate() == pytest.approx(result)

    m, b, h = maps.double().numpy()[:, 0], boxes.numpy()[:, 0] > 0, neg.numpy()[:, 0]
    healthy = [i for i in range(n) if not b[i].any()]
    th = next(t / k for t in range(k) if np.mean([(m[i][h[i]] > t / k).mean() for i in healthy]) <= 0.05)
    recalls, precisions, f1s = [], [], []
    for i in range(n):
        if not b[i].any():
            continue
        z = np.where(m[i] > th, m[i], 0)
        tp = float((z[b[i]] > 0).sum() > 0.1 * b[i].sum())
        fp = min(10, np.floor(z[h[i]].sum() / max(z[b[i]].sum(), 1)))
        prec = tp / max(tp + fp, 1)
        recalls.append(tp)
        precisions.append(prec)
        f1s.append(2 * prec * tp / (prec + tp) if prec + tp > 0 else 0.0)
    assert result["threshold"] == pytest.approx(th)
    assert result["recall"] == pytest.approx(np.mean(recalls))
    assert result["precision"] == pytest.approx(np.mean(precisions))
    assert result["f1"] == pytest.approx(np.mean(f1s))


def test_box_metric_fixed_threshold_and_errors():
    maps, boxes = box_example()
    fixed = BoxDetectionMetric(threshold=0.4)
    fixed(maps[2:], boxes[2:])  # no healthy image needed
    result = fixed.aggregate()
    assert result["threshold"] == 0.4 and result["recall"] == pytest.approx(2 / 3)
    assert np.isnan(result["healthy_fraction"])
    calibrating = BoxDetectionMetric()
    calibrating(maps[2:], boxes[2:])
    with pytest.raises(ValueError, match="healthy"):
        calibrating.aggregate()
    with pytest.raises(ValueError):
        BoxDetectionMetric(threshold=1.0)
    with pytest.raises(ValueError):
        calibrating(maps * 2, boxes)


# ---------------------------------------------------------------------------------------- reconstruction


def test_reconstruction_metric_matches_skimage_and_numpy():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(14)
    image = torch.rand(4, 1, 32, 32, generator=g)
    recon = (image + 0.1 * torch.randn(4, 1, 32, 32, generator=g)).clamp(0, 1)
    metric = ReconstructionMetric(perceptual=lambda a, b: (a - b).abs())  # per-pixel distance
    metric(recon[:2], image[:2])
    per_image = metric(recon[2:], image[2:])
    assert per_image.shape == (2, 4) and metric.names == ("ssim", "mse", "mae", "lpips")
    x, y = recon.double().numpy()[:, 0], image.double().numpy()[:, 0]
    ssim = [
        skimage_metrics.structural_similarity(
            x[i], y[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        for i in range(4)
    ]
    result = metric.aggregate()
    assert result["ssim"] == pytest.approx(np.mean(ssim), abs=1e-5)
    assert result["mse"] == pytest.approx(np.mean((x - y) ** 2), rel=1e-5)
    assert result["mae"] == pytest.approx(np.mean(np.abs(x - y)), rel=1e-5)
    assert result["lpips"] == pytest.approx(result["mae"], rel=1e-6)
    assert metric.get_buffer().shape == (4, 4)
    reordered = ReconstructionMetric(perceptual=lambda a, b: (a - b).abs())
    reordered(recon[[3, 1]], image[[3, 1]])
    reordered(recon[[2, 0]], image[[2, 0]])
    assert reordered.aggregate() == result  # exactly: the rows of distributed ranks arrive in another order
    metric.reset()
    with pytest.warns(RuntimeWarning):
        assert np.isnan(metric.aggregate()["ssim"])


def test_reconstruction_metric_perceptual_forms():
    image = torch.rand(3, 1, 16, 16)
    per_image = ReconstructionMetric(perceptual=lambda a, b: (a - b).pow(2).flatten(1).mean(1), perceptual_name="d")
    values = per_image(image * 0.5, image)
    assert torch.allclose(values[:, 3], values[:, 1])  # per-image (B,) output is taken as is
    bad = ReconstructionMetric(perceptual=lambda a, b: (a - b).mean())
    with pytest.raises(ValueError, match="perceptual"):
        bad(image, image)
    with pytest.raises(ValueError):
        ReconstructionMetric()(image, image[:, :, :8])
    with pytest.raises(TypeError):
        ReconstructionMetric(perceptual="lpips")


# ------------------------------------------------------------------------------------- engines, devices


def test_metrics_in_ignite_handler():
    ignite_engine = pytest.importorskip("ignite.engine")
    from monai.handlers import IgniteMetricHandler

    maps, labels, _ = random_set(15)
    batches = [(maps[i : i + 2], labels[i : i + 2]) for i in range(0, 6, 2)]
    engine = ignite_engine.Engine(lambda e, batch: batch)
    IgniteMetricHandler(BestDiceMetric()).attach(engine, "max_dice")
    IgniteMetricHandler(AUPRCMetric(n_bins=1000)).attach(engine, "auprc")
    engine.run(batches, max_epochs=2)  # reset between epochs keeps the values per epoch
    assert engine.state.metrics["max_dice"] == best_dice(maps, labels)[0]
    assert engine.state.metrics["auprc"] == pytest.approx(auprc(maps, labels, n_bins=1000), abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_on_device(device):
    maps, labels, mask = (t.to(device) for t in random_set(16, quantum=0.01))
    dice = BestDiceMetric(return_threshold=True)
    dice(maps, labels, mask=mask)
    assert dice.aggregate() == best_dice(maps.cpu(), labels.cpu(), mask.cpu())
    ap = AUPRCMetric(n_bins=1000)
    ap(maps, labels, mask=mask)
    assert ap.aggregate() == pytest.approx(auprc(maps.cpu(), labels.cpu(), mask.cpu(), n_bins=1000), abs=1e-12)
    box = BoxDetectionMetric(n_thresholds=20)
    box(maps, labels.float())
    assert box.get_buffer()[0].device.type == torch.device(device).type
