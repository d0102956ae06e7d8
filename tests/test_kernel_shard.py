"""The NumPy shard pass (:mod:`crossent._kernel_shard`) on its own, without torch.

The sharded loss is held to PyTorch through every executor in ``tests/torch/test_shard.py``.
Here: the targets of a column range are the whole row's targets cut into pieces; one shard of
every class gives the fused pass's loss to the last bit; and a masked vocabulary (``-inf``
logits the target does not weigh) goes through the fused pass's block-wise exact dot
product, once per block, never row by row.
"""

from __future__ import annotations

import numpy as np
import pytest

from crossent import _kernel
from crossent import _kernel_shard as kshard

F64 = np.dtype(np.float64)


def targets_of(target, columns=None, col_start=0, *, probability=False, weight=None,
               label_smoothing=0.0, z_loss=0.0, num_classes):
    targets, _ = _kernel.build_row_targets(
        target, probability=probability, weight=weight, ignore_index=-100,
        label_smoothing=label_smoothing, z_loss=z_loss, num_classes=num_classes,
        compute_dtype=F64, col_start=col_start, real_columns=columns)
    return targets


@pytest.mark.parametrize("weighted", [False, True])
def test_column_ranges_cut_the_row_targets_into_pieces(rng, weighted):
    """Over ranges that cover the classes, each row's class is in exactly one range (at its
    column there), the uniform terms are the whole one's slices, the sums A add up to the
    whole row's, and z-loss weighs every range alike."""
    classes, bounds = 13, [0, 1, 5, 12, 13]
    y = rng.integers(0, classes, 40)
    y[::5] = -100
    weight = rng.uniform(0.5, 2.0, classes) if weighted else None
    kw = dict(weight=weight, label_smoothing=0.1, z_loss=1e-3, num_classes=classes)
    whole = targets_of(y, **kw)
    pieces = [targets_of(y, b - a, a, **kw) for a, b in zip(bounds, bounds[1:])]
    on_target = np.zeros(40)
    for a, piece in zip(bounds, pieces):
        here = piece.on_target != 0
        np.testing.assert_array_equal(a + piece.index[here], y[here])
        on_target += piece.on_target
        np.testing.assert_array_equal(piece.valid, y != -100)
        np.testing.assert_array_equal(piece.z_weight, whole.z_weight)
        assert piece.num_classes == classes
    np.testing.assert_array_equal(on_target, whole.on_target)
    if weighted:
        np.testing.assert_array_equal(np.concatenate([p.uniform for p in pieces]),
                                      whole.uniform)
    else:
        assert all(p.uniform == whole.uniform for p in pieces)
    np.testing.assert_allclose(sum(p.coef_sum for p in pieces), whole.coef_sum, rtol=1e-15)
    probs = targets_of(rng.dirichlet(np.ones(4), 40), 4, 5, probability=True,
                       weight=weight, num_classes=classes)
    assert probs.prob_scale is None if weight is None else np.array_equal(probs.prob_scale,
                                                                          weight[5:9])


def masked_problem(rng, rows, classes, kind):
    """Classes 1, 4, 7, ... masked to -inf in every row, the target giving them nothing:
    probability 0 there, or class weight 0 there with label smoothing."""
    x = rng.normal(0.0, 3.0, size=(rows, classes))
    masked = np.arange(classes) % 3 == 1
    x[:, masked] = -np.inf
    kept = np.flatnonzero(~masked)
    if kind == "probability":
        t = np.zeros((rows, classes))
        t[:, kept] = rng.dirichlet(np.ones(kept.size), size=rows)
        return x, t, dict(probability=True, label_smoothing=0.0)
    y = rng.choice(kept, size=rows)
    y[::7] = -100
    w = np.where(masked, 0.0, rng.uniform(0.5, 2.0, classes))
    return x, y, dict(weight=w, label_smoothing=0.2)


def expected_statistics(x, targets_full, col_start, columns):
    """``(m, s, d, A)`` of columns ``col_start:col_start + columns``, written out in float64
    from the whole row's coefficients ``a`` (dense), the terms with ``a_c = 0`` left out."""
    rows, classes = x.shape
    t = targets_full
    if t.probability is not None:
        a = t.probability * (1 - t.label_smoothing) + t.label_smoothing / classes
        a = a * t.prob_scale if t.prob_scale is not None else a
    else:
        a = np.tile(np.broadcast_to(t.uniform, (classes,)), (rows, 1))
        a[np.arange(rows), t.index] += t.on_target
        a[~t.valid] = 0.0
    sl = slice(col_start, col_start + columns)
    z, a = x[:, sl], a[:, sl]
    m = z.max(axis=1)
    r = np.where(m == -np.inf, 0.0, m)
    shifted = z - r[:, None]
    d = np.where(a != 0, a * np.where(a != 0, shifted, 0.0), 0.0).sum(axis=1)
    return np.stack([m, np.exp(shifted).sum(axis=1), d, a.sum(axis=1)])


@pytest.mark.parametrize("kind", ["probability", "index-smoothing"])
def test_masked_vocabulary_statistics_take_the_block_wise_exact_path(rng, monkeypatch, kind):
    """Every row has -inf logits the target does not weigh: each shard's statistics are the
    ones written out over its weighed classes, finite (a shard of masked columns only is
    ``(-inf, 0, 0, A)``), and the exact dot product runs once per block on the whole block,
    as in the fused pass: no row-by-row path."""
    rows, classes = 60, 31
    x, target, kw = masked_problem(rng, rows, classes, kind)
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", 8 * 7)  # blocks of a few rows
    calls = []
    exact = _kernel._dot_without_zero_terms

    def counted(shifted, *args):
        calls.append(shifted.shape)
        return exact(shifted, *args)

    monkeypatch.setattr(_kernel, "_dot_without_zero_terms", counted)
    whole = targets_of(target, **kw, num_classes=classes)
    for a, b in [(0, 1), (1, 2), (2, 10), (10, 31)]:  # (1, 2) holds the masked class 1 only
        calls.clear()
        t = target[:, a:b] if kind == "probability" else target
        targets = targets_of(t, b - a, a, **kw, num_classes=classes)
        stats = kshard.shard_statistics(np.ascontiguousarray(x[:, a:b]), targets, b - a, F64)
        np.testing.assert_allclose(stats, expected_statistics(x, whole, a, b - a),
                                   rtol=1e-13, atol=1e-13)
        assert np.isfinite(stats[kshard.SUM_EXP:]).all()
        if b - a > 1:  # a masked column in every row: every block is on the exact path
            plan = _kernel._Blocking.plan((rows, b - a))
            assert len(calls) == len(list(plan.blocks(0, plan.units))) > 1
            assert sum(r * c for r, c in calls) == rows * (b - a)
    ignored = target == -100 if kind != "probability" else np.zeros(rows, bool)
    assert not stats[kshard.DOT:, ignored].any()  # ignored rows: d = A = 0


@pytest.mark.parametrize("kind", ["plain", "probability", "index-smoothing"])
def test_one_shard_of_every_class_is_the_fused_loss_to_the_last_bit(rng, kind):
    """K = 1: ``A log s - d`` from the shard's statistics is the fused pass's loss, bit for
    bit (the same blocks, shift and dot product), masked vocabulary or not."""
    rows, classes = 50, 29
    if kind == "plain":
        x = rng.normal(0.0, 3.0, size=(rows, classes))
        target, kw = rng.integers(0, classes, rows), {}
    else:
        x, target, kw = masked_problem(rng, rows, classes, kind)
    targets = targets_of(target, classes, **kw, num_classes=classes)
    stats = kshard.shard_statistics(x, targets, classes, F64)
    loss = stats[kshard.COEF_SUM] * np.log(stats[kshard.SUM_EXP]) - stats[kshard.DOT]
    if targets.valid is not None:
        loss[~targets.valid] = 0.0
    fused = _kernel.fused_softmax_cross_entropy(x, targets_of(target, **kw,
                                                              num_classes=classes), 1.0, F64)
    np.testing.assert_array_equal(loss, fused)
