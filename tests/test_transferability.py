"""Transferability estimators (LogME, LEEP, NCE, H-score, linear probe) and the ranking core.

Hand-computed values on small fixed matrices (the arithmetic is written out), the properties the
papers prove or show, determinism, and one-line errors for bad inputs. Everything is tiny numpy
data: the whole file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch

from tl_lightning.errors import ConfigurationError, DataError, UnknownNameError
from tl_lightning.transferability import (
    CandidateFeatures,
    fine_tune_cost_estimate,
    h_score,
    kendall_tau,
    kendall_tau_b,
    ledoit_wolf_shrinkage,
    leep,
    linear_probe,
    logme,
    logme_fit,
    nce,
    rank_candidates,
)

# ---------------------------------------------------------------------------------------------
# shared synthetic data


def _blobs(n: int = 240, d: int = 12, classes: int = 3, sep: float = 2.0, seed: int = 0):
    """Features whose first ``classes`` dims shift with the class: informative for every estimator."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    f = rng.normal(size=(n, d))
    f[:, :classes] += sep * np.eye(classes)[y]
    return f, y


def _source_probs(y: np.ndarray, sources: int = 4, sharp: float = 3.0, seed: int = 0) -> np.ndarray:
    """Softmax outputs of a "source classifier" whose argmax follows the target class (informative)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), sources))
    logits[np.arange(len(y)), y % sources] += sharp
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, beta^-1 I + alpha^-1 F F^T): the evidence of the Bayesian linear model, directly."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))


# ---------------------------------------------------------------------------------------------
# NCE


def test_nce_hand_computed_six_samples() -> None:
    z = np.array([0, 0, 0, 0, 1, 1])
    y = np.array([0, 0, 0, 1, 1, 1])
    # Source class 0 (4 of 6 samples): targets 3 x class 0, 1 x class 1 -> P(y|z=0) = (3/4, 1/4).
    # Source class 1 (2 of 6): both class 1 -> P(y|z=1) = (0, 1), entropy 0.
    # NCE = sum P(y, z) log P(y|z) = 3/6 log(3/4) + 1/6 log(1/4) + 2/6 log(1).
    expected = 3 / 6 * math.log(3 / 4) + 1 / 6 * math.log(1 / 4)
    assert nce(z, y) == pytest.approx(expected, abs=1e-12)
    # The same source labels as (n, Z) outputs: only their argmax counts (probabilities or logits).
    logits = np.where(np.eye(2)[z] > 0, 2.0, -1.0)
    assert nce(logits, y) == pytest.approx(expected, abs=1e-12)


def test_nce_symmetric_case_is_minus_binary_entropy() -> None:
    z = [0, 0, 0, 1, 1, 1]
    y = [0, 0, 1, 1, 1, 0]
    # Both source classes split their 3 samples 2:1 -> H(Y|Z) = H(2/3, 1/3).
    assert nce(z, y) == pytest.approx(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3), abs=1e-12)


def test_nce_is_zero_iff_target_is_a_function_of_source_and_bounded() -> None:
    rng = np.random.default_rng(0)
    z = rng.integers(0, 6, 300)
    mapping = np.array([2, 0, 1, 2, 0, 1])  # many-to-one: still a function
    assert nce(z, mapping[z]) == 0.0
    assert nce(z, np.array(["a", "b", "c"])[mapping[z]]) == 0.0  # label type does not matter
    y = rng.integers(0, 3, 300)
    score = nce(z, y)
    assert -math.log(3) - 1e-12 <= score < -0.5  # random labels: close to -log C


def test_nce_invariant_to_renumbering_either_label_set() -> None:
    rng = np.random.default_rng(1)
    z = rng.integers(0, 5, 200)
    y = (z + rng.integers(0, 2, 200)) % 3
    perm_z = np.array([3, 1, 4, 0, 2])
    perm_y = np.array([2, 0, 1])
    assert nce(perm_z[z], perm_y[y]) == pytest.approx(nce(z, y), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# LEEP

_THETA = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.5, 0.5]])
_Y6 = np.array([0, 0, 1, 1, 1, 0])


def test_leep_hand_computed_six_samples() -> None:
    # Joint P(y, z) = 1/6 sum of theta rows per target class:
    #   y=0 (rows 0, 1, 5): z0 0.9+0.8+0.5 = 2.2, z1 0.1+0.2+0.5 = 0.8
    #   y=1 (rows 2, 3, 4): z0 0.6+0.3+0.2 = 1.1, z1 0.4+0.7+0.8 = 1.9
    # P(y|z0) = (2.2, 1.1) / 3.3 = (2/3, 1/3);  P(y|z1) = (0.8, 1.9) / 2.7 = (8/27, 19/27)
    p_y_given = {0: (Fraction(2, 3), Fraction(8, 27)), 1: (Fraction(1, 3), Fraction(19, 27))}
    theta = [
        [Fraction(9, 10), Fraction(1, 10)],
        [Fraction(8, 10), Fraction(2, 10)],
        [Fraction(6, 10), Fraction(4, 10)],
        [Fraction(3, 10), Fraction(7, 10)],
        [Fraction(2, 10), Fraction(8, 10)],
        [Fraction(5, 10), Fraction(5, 10)],
    ]
    eep = [row[0] * p_y_given[y][0] + row[1] * p_y_given[y][1] for row, y in zip(theta, _Y6, strict=True)]
    expected = sum(math.log(float(p)) for p in eep) / 6
    assert leep(_THETA, _Y6) == pytest.approx(expected, abs=1e-12)
    # Float32 softmax outputs and torch tensors are read the same way.
    assert leep(torch.tensor(_THETA, dtype=torch.float32), torch.tensor(_Y6)) == pytest.approx(
        expected, abs=1e-6
    )


def test_leep_equals_nce_for_one_hot_source_outputs() -> None:
    rng = np.random.default_rng(2)
    z = rng.integers(0, 5, 150)
    y = (z + (rng.random(150) < 0.3)) % 3
    one_hot = np.eye(5)[z]
    assert leep(one_hot, y) == pytest.approx(nce(z, y), abs=1e-12)


def test_leep_nonpositive_and_invariant_to_source_class_order() -> None:
    f, y = _blobs()
    probs = _source_probs(y)
    score = leep(probs, y)
    assert score <= 0
    perm = np.array([2, 0, 3, 1])
    assert leep(probs[:, perm], y) == pytest.approx(score, abs=1e-12)
    # A source class nobody predicts (all-zero column) changes nothing.
    padded = np.concatenate([probs, np.zeros((len(y), 1))], axis=1)
    assert leep(padded, y) == pytest.approx(score, abs=1e-12)


def test_leep_zero_when_source_is_certain_and_determines_target() -> None:
    z = np.array([0, 1, 2, 0, 1, 2])
    y = np.array([1, 0, 0, 1, 0, 0])
    assert leep(np.eye(3)[z], y) == 0.0


# ---------------------------------------------------------------------------------------------
# H-score


def test_h_score_hand_computed_one_dim() -> None:
    f = np.array([[0.0], [1.0], [2.0], [4.0], [5.0], [6.0]])
    y = [0, 0, 0, 1, 1, 1]
    # mean 3; class means 1 and 5 -> between variance ((1-3)^2 + (5-3)^2) / 2 = 4;
    # total variance (9 + 4 + 1 + 1 + 4 + 9) / 6 = 28/6 -> H = 4 / (28/6) = 6/7.
    # In 1-D the covariance already equals the Ledoit-Wolf target: the shrinkage is 0.
    for shrinkage in ("ledoit-wolf", None, 0.0):
        assert h_score(f, y, shrinkage=shrinkage) == pytest.approx(6 / 7, abs=1e-12)


def _direct_h(f: np.ndarray, y: np.ndarray, a: float) -> float:
    """tr(S_a^-1 (1-a) cov(E[f|y])) with numpy's covariance, an explicit inverse, per-sample class means."""
    cov = np.cov(f, rowvar=False, bias=True)
    d = f.shape[1]
    shrunk = (1 - a) * cov + a * np.trace(cov) / d * np.eye(d)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - a) * np.cov(g, rowvar=False, bias=True))))


def test_h_score_matches_direct_formula_small_case() -> None:
    rng = np.random.default_rng(3)
    # Correlated dims, so that Ledoit-Wolf shrinks only part of the way.
    y = np.arange(12) % 3
    f = rng.normal(size=(12, 3)) @ np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.2]])
    assert h_score(f, y, shrinkage=None) == pytest.approx(_direct_h(f, y, 0.0), rel=1e-10)
    assert h_score(f, y, shrinkage=0.3) == pytest.approx(_direct_h(f, y, 0.3), rel=1e-10)
    a = ledoit_wolf_shrinkage(f - f.mean(axis=0))
    assert 0 < a < 1
    assert h_score(f, y) == pytest.approx(_direct_h(f, y, a), rel=1e-10)
    # More dims than samples: the n x n route must agree with the d x d formula.
    wide = rng.normal(size=(8, 20))
    y8 = np.array([0, 1] * 4)
    a = ledoit_wolf_shrinkage(wide - wide.mean(axis=0))
    assert h_score(wide, y8) == pytest.approx(_direct_h(wide, y8, a), rel=1e-8)
    assert h_score(wide, y8, shrinkage=0.5) == pytest.approx(_direct_h(wide, y8, 0.5), rel=1e-8)


def test_ledoit_wolf_shrinkage_matches_its_definition() -> None:
    rng = np.random.default_rng(4)
    for n, d in [(30, 5), (6, 10)]:
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        x = x - x.mean(axis=0)
        s = x.T @ x / n
        mu = np.trace(s) / d
        d2 = np.sum((s - mu * np.eye(d)) ** 2) / d
        b2 = sum(np.sum((np.outer(row, row) - s) ** 2) for row in x) / n**2 / d
        assert ledoit_wolf_shrinkage(x) == pytest.approx(min(b2, d2) / d2, rel=1e-10)
        sklearn_cov = pytest.importorskip("sklearn.covariance")
        assert ledoit_wolf_shrinkage(x) == pytest.approx(sklearn_cov.ledoit_wolf_shrinkage(x), rel=1e-8)


def test_h_score_bounds_and_why_it_is_shrunk() -> None:
    f, y = _blobs(n=90, d=6, classes=3, sep=3.0)
    for shrinkage in ("ledoit-wolf", None, 0.2):
        assert 0 <= h_score(f, y, shrinkage=shrinkage) <= 2 + 1e-9  # C - 1 = 2
    # Features constant within each class explain everything: H = C - 1 with the exact inverse.
    means = np.random.default_rng(0).normal(size=(3, 6))
    assert h_score(means[y] + 1e-6 * f, y, shrinkage=None) == pytest.approx(2.0, abs=1e-6)
    # With more dims than samples the pseudo-inverse H-score fits noise perfectly (C - 1 on
    # random features); the Ledoit-Wolf one does not.
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(20, 50))
    labels = np.arange(20) % 2
    assert h_score(noise, labels, shrinkage=None) == pytest.approx(1.0, abs=1e-6)
    assert h_score(noise, labels) < 0.5


def test_h_score_invariances() -> None:
    f, y = _blobs(n=120, d=5, classes=3, seed=6)
    base = h_score(f, y)
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(5, 5)))
    assert h_score(f + 10.0, y) == pytest.approx(base, rel=1e-9)  # translation
    assert h_score(3.5 * f, y) == pytest.approx(base, rel=1e-9)  # scale
    assert h_score(f @ rotation, y) == pytest.approx(base, rel=1e-9)  # rotation
    assert h_score(f, np.array([2, 0, 1])[y]) == pytest.approx(base, rel=1e-12)  # class numbering
    # Without shrinkage: any invertible linear map.
    linear = np.random.default_rng(8).normal(size=(5, 5)) + 3 * np.eye(5)
    assert h_score(f @ linear, y, shrinkage=None) == pytest.approx(h_score(f, y, shrinkage=None), rel=1e-8)


def test_h_score_singular_covariance_without_shrinkage_is_an_error() -> None:
    f = np.random.default_rng(0).normal(size=(5, 8))
    with pytest.raises(DataError, match="singular"):
        h_score(f, [0, 1, 0, 1, 0], shrinkage=0.0)
    with pytest.raises(ConfigurationError, match="ledoit-wolf"):
        h_score(f, [0, 1, 0, 1, 0], shrinkage="oas")
    # Constant features (centering leaves only rounding noise) have no covariance to speak of.
    with pytest.raises(DataError, match="constant"):
        h_score(np.tile(f[:1] * 1e3, (5, 1)), [0, 1, 0, 1, 0])
    with pytest.raises(ConfigurationError, match="shrinkage"):
        h_score(f, [0, 1, 0, 1, 0], shrinkage=1.0)


# ---------------------------------------------------------------------------------------------
# LogME


@pytest.mark.parametrize(("n", "d"), [(60, 8), (12, 30), (20, 20)], ids=["n>d", "n<d", "n=d"])
def test_logme_is_the_evidence_at_the_reported_alpha_beta(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    f = rng.normal(size=(n, d))
    labels = np.argmax(f[:, :3] + 0.5 * rng.normal(size=(n, 3)), axis=1)
    fit = logme_fit(f, labels)
    for c in range(3):
        y = (labels == c).astype(float)
        direct = _gaussian_log_evidence(f, y, fit.alpha[c], fit.beta[c]) / n
        assert fit.evidence[c] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert fit.score == pytest.approx(fit.evidence.mean(), rel=1e-12)
    assert logme(f, labels) == fit.score


def test_logme_fixed_point_is_a_maximum_of_the_evidence() -> None:
    rng = np.random.default_rng(9)
    f = rng.normal(size=(80, 6))
    labels = np.argmax(f[:, :2] + 0.7 * rng.normal(size=(80, 2)), axis=1)
    fit = logme_fit(f, labels)
    assert (fit.iterations < 100).all()  # converged, not stopped by max_iter
    for c in range(2):
        y = (labels == c).astype(float)
        best = _gaussian_log_evidence(f, y, fit.alpha[c], fit.beta[c])
        for da, db in [
            (1.05, 1),
            (1 / 1.05, 1),
            (1, 1.05),
            (1, 1 / 1.05),
            (1.05, 1.05),
            (1 / 1.05, 1 / 1.05),
        ]:
            assert _gaussian_log_evidence(f, y, fit.alpha[c] * da, fit.beta[c] * db) < best


def _naive_logme(f: np.ndarray, labels: np.ndarray, iters: int = 200) -> float:
    """Algorithm 1 of the paper with explicit d x d matrices, no eigenbasis tricks."""
    n, d = f.shape
    sigma = np.linalg.eigvalsh(f.T @ f)
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            a_mat = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a_mat, f.T @ y)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((y - f @ m) ** 2)
        a_mat = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a_mat, f.T @ y)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((y - f @ m) ** 2)
            - alpha / 2 * (m @ m)
            - np.linalg.slogdet(a_mat)[1] / 2
        )
        out.append(evidence / n)
    return float(np.mean(out))


def test_logme_matches_a_naive_implementation_of_algorithm_1() -> None:
    f, y = _blobs(n=90, d=7, classes=3, sep=1.0, seed=10)
    assert logme(f, y) == pytest.approx(_naive_logme(f, y), rel=1e-7)


def test_logme_rises_as_labels_become_a_linear_function_of_the_features() -> None:
    rng = np.random.default_rng(11)
    f = rng.normal(size=(400, 10))
    w = rng.normal(size=(10, 4))
    noise = rng.normal(size=(400, 4))
    scores = [logme(f, np.argmax(f @ w + level * noise, axis=1)) for level in (0.1, 1.0, 3.0, 10.0)]
    assert scores == sorted(scores, reverse=True)  # less noise, higher LogME
    assert logme(f, rng.integers(0, 4, 400)) < scores[-1]
    # Relabelling the classes does not change the score (mean over one-vs-rest targets).
    labels = np.argmax(f @ w, axis=1)
    assert logme(f, np.array([3, 1, 0, 2])[labels]) == pytest.approx(logme(f, labels), rel=1e-12)


def test_logme_all_zero_features_is_an_error() -> None:
    with pytest.raises(DataError, match="all zero"):
        logme(np.zeros((10, 4)), [0, 1] * 5)


# ---------------------------------------------------------------------------------------------
# linear probe


def test_linear_probe_separable_vs_random_and_deterministic() -> None:
    f, y = _blobs(n=300, d=16, classes=3, sep=6.0)
    result = linear_probe(f, y)
    assert result.accuracy == 1.0
    assert result.held_out and result.n_val == 60 and result.n_fit == 240  # 20% of each class
    assert result.l2 in result.accuracy_per_l2
    random_labels = np.random.default_rng(0).permutation(y)
    assert linear_probe(f, random_labels).accuracy < 0.6
    again = linear_probe(f, y)
    assert again == result
    # float64 agrees with the float32 default on an easy problem.
    assert linear_probe(f, y, dtype="float64").accuracy == result.accuracy


def test_linear_probe_with_given_validation_features() -> None:
    f, y = _blobs(n=200, d=8, classes=2, sep=3.0, seed=1)
    names = np.array(["cat", "dog"])
    result = linear_probe(f[:150], names[y[:150]], val_features=f[150:], val_labels=names[y[150:]])
    assert not result.held_out and (result.n_fit, result.n_val) == (150, 50)
    assert result.accuracy > 0.9
    with pytest.raises(DataError, match="not in the training labels"):
        linear_probe(f[:150], names[y[:150]], val_features=f[150:152], val_labels=["cat", "bird"])
    with pytest.raises(DataError, match="dims"):
        linear_probe(f[:150], y[:150], val_features=f[150:, :4], val_labels=y[150:])
    with pytest.raises(ConfigurationError, match="both val_features and val_labels"):
        linear_probe(f, y, val_features=f[:10])


def test_linear_probe_picks_l2_on_validation_and_checks_options() -> None:
    f, y = _blobs(n=120, d=40, classes=2, sep=0.8, seed=2)
    result = linear_probe(f, y, l2_grid=[1e-3, 10.0])
    assert result.accuracy == max(result.accuracy_per_l2.values())
    assert set(result.accuracy_per_l2) == {1e-3, 10.0}
    with pytest.raises(ConfigurationError, match="l2_grid"):
        linear_probe(f, y, l2_grid=[])
    with pytest.raises(ConfigurationError, match="val_fraction"):
        linear_probe(f, y, val_fraction=1.0)
    with pytest.raises(UnknownNameError, match="dtype"):
        linear_probe(f, y, dtype="float16")
    with pytest.raises(DataError, match="none to hold out"):
        linear_probe(np.eye(3), [0, 1, 2])


# ---------------------------------------------------------------------------------------------
# all estimators: random labels score low, determinism, errors

_FEATURE_ESTIMATORS = {
    "logme": logme,
    "hscore": h_score,
    "linear_probe": lambda f, y: linear_probe(f, y).accuracy,
}


def test_random_labels_score_lower_than_informative_labels_on_every_estimator() -> None:
    f, y = _blobs(n=240, d=12, classes=3, sep=2.5)
    probs = _source_probs(y)
    shuffled = np.random.default_rng(1).permutation(y)
    for name, estimator in _FEATURE_ESTIMATORS.items():
        assert estimator(f, y) > estimator(f, shuffled), name
    assert leep(probs, y) > leep(probs, shuffled)
    assert nce(probs, y) > nce(probs, shuffled)


def test_every_estimator_is_deterministic() -> None:
    f, y = _blobs(n=150, d=10)
    probs = _source_probs(y)
    for estimator in _FEATURE_ESTIMATORS.values():
        assert estimator(f, y) == estimator(f.copy(), y.copy())
    assert leep(probs, y) == leep(probs.copy(), y.copy())
    assert nce(probs, y) == nce(probs.copy(), y.copy())


@pytest.mark.parametrize("name", ["logme", "hscore", "linear_probe", "leep", "nce"])
def test_bad_inputs_are_one_line_data_errors(name: str) -> None:
    f, y = _blobs(n=30, d=4)
    probs = _source_probs(y)
    first = f if name in _FEATURE_ESTIMATORS else probs
    estimator = _FEATURE_ESTIMATORS.get(name) or {"leep": leep, "nce": nce}[name]
    cases = [
        ((first, y[:-1]), "must match"),  # mismatched shapes
        ((first, np.zeros(30, dtype=int)), "single class"),
        ((first, np.eye(3)[y]), "1-D"),  # one-hot labels instead of indices
    ]
    if name in _FEATURE_ESTIMATORS:
        with_nan = f.copy()
        with_nan[7, 2] = np.nan
        cases.append(((with_nan, y), "non-finite"))
        cases.append(((f[None], y), "2-D"))
    for args, message in cases:
        with pytest.raises(DataError, match=message) as info:
            estimator(*args)
        assert "\n" not in str(info.value)


def test_leep_refuses_logits_and_wrong_rows() -> None:
    logits = np.log(_THETA) + 2.0
    with pytest.raises(DataError, match="softmax"):
        leep(logits, _Y6)
    with pytest.raises(DataError, match="rows"):
        leep(_THETA[:5], _Y6)
    with pytest.raises(DataError, match="non-finite"):
        nce(np.full((6, 2), np.nan), _Y6)


# ---------------------------------------------------------------------------------------------
# ranking


def _candidates(with_timing: bool = True) -> dict[str, CandidateFeatures]:
    good_f, y = _blobs(n=180, d=10, classes=3, sep=3.0, seed=0)
    mid_f, _ = _blobs(n=180, d=10, classes=3, sep=1.0, seed=1)
    bad_f = np.random.default_rng(2).normal(size=(180, 10))
    timing = {"forward_seconds_per_batch": 0.5, "batch_size": 32} if with_timing else {}
    return {
        "tv:bad": CandidateFeatures(bad_f, y, feature_seconds=0.25, **timing),
        "timm:good": CandidateFeatures(
            good_f, y, source_probs=_source_probs(y), feature_seconds=0.5, **timing
        ),
        "hf:mid": CandidateFeatures(
            mid_f, y, source_probs=_source_probs(y, sharp=0.5), feature_seconds=0.5, **timing
        ),
    }


def test_rank_candidates_orders_by_logme_and_reports_every_score() -> None:
    ranking = rank_candidates(_candidates())
    assert ranking.names() == ["timm:good", "hf:mid", "tv:bad"]
    assert [row.rank for row in ranking] == [1, 2, 3]
    logmes = [row.scores["logme"] for row in ranking]
    assert logmes == sorted(logmes, reverse=True)
    good, bad = ranking["timm:good"], ranking["tv:bad"]
    assert good.scores["logme"] == logme(
        _candidates()["timm:good"].train_features, _candidates()["timm:good"].train_labels
    )
    assert bad.scores["leep"] is None and bad.scores["nce"] is None  # no source classifier
    assert good.scores["leep"] is not None and good.scores["leep"] > ranking["hf:mid"].scores["leep"]
    assert good.scores["linear_probe"] == good.linear_probe.accuracy > bad.scores["linear_probe"]
    assert (good.n_train, good.feature_dim, good.num_classes) == (180, 10, 3)
    assert set(good.seconds) == {"features", "logme", "leep", "nce", "hscore", "linear_probe"}
    assert any("tv:bad" in note for note in ranking.notes)


def test_ranking_cost_against_the_fine_tuning_estimate() -> None:
    ranking = rank_candidates(_candidates(), fine_tune_epochs=5)
    per_candidate = fine_tune_cost_estimate(180, 5, 0.5, batch_size=32)  # 5 * 3 * 6 batches * 0.5 s = 45 s
    assert per_candidate == pytest.approx(45.0)
    assert ranking["timm:good"].fine_tune_seconds == pytest.approx(per_candidate)
    assert ranking.cost.fine_tune_seconds == pytest.approx(3 * per_candidate)
    assert ranking.cost.feature_seconds == pytest.approx(1.25)
    scoring = sum(sum(v for k, v in row.seconds.items() if k != "features") for row in ranking)
    assert ranking.cost.seconds == pytest.approx(1.25 + scoring)
    assert ranking.cost.fraction == pytest.approx(ranking.cost.seconds / (3 * per_candidate))
    assert ranking.cost.within_budget is (ranking.cost.fraction < 0.05)
    # Slow features against a cheap fine-tuning estimate: over the 5% budget, and the report says so.
    slow = {k: replace(v, feature_seconds=10.0) for k, v in _candidates().items()}
    over = rank_candidates(slow, scores=["logme"], fine_tune_epochs=1)  # 30 s of features vs 27 s
    assert over.cost.within_budget is False and "OVER the 5% budget" in over.to_markdown()
    # One candidate without a forward timing: no (partial) total.
    no_timing = rank_candidates(_candidates(with_timing=False), scores=["logme"])
    assert no_timing.cost.fine_tune_seconds is None and no_timing.cost.fraction is None


def test_fine_tune_cost_estimate_hand_value_and_checks() -> None:
    # 10 epochs x (3 x 100 train batches + 20 val batches) x 0.05 s = 160 s
    assert fine_tune_cost_estimate(10_000, 10, 0.05, batch_size=100, n_val=2_000) == pytest.approx(160.0)
    # Partial batches count as batches; a frozen prefix lowers the step factor.
    assert fine_tune_cost_estimate(101, 1, 1.0, batch_size=100, train_step_factor=1.5) == pytest.approx(3.0)
    with pytest.raises(ConfigurationError, match="epochs"):
        fine_tune_cost_estimate(100, 0, 1.0, batch_size=10)
    with pytest.raises(ConfigurationError, match="seconds_per_forward_batch"):
        fine_tune_cost_estimate(100, 1, -1.0, batch_size=10)


def test_ranking_markdown_json_and_plot(tmp_path) -> None:
    ranking = rank_candidates(_candidates())
    text = ranking.to_markdown()
    lines = text.splitlines()
    assert (
        lines[0]
        == "| rank | candidate | LogME (primary) | LEEP | NCE | H-score | linear probe acc | dim | seconds |"
    )
    assert lines[2].startswith("| 1 | timm:good | ") and lines[4].startswith("| 3 | tv:bad | ")
    assert "| – | – |" in lines[4]  # no LEEP / NCE for the candidate without a source classifier
    assert "Ranked by LogME" in text and "fine-tuning every candidate for 10 epochs" in text and "%" in text

    data = json.loads(json.dumps(ranking.to_json()))
    assert data["primary"] == "logme" and data["higher_is_better"] is True
    assert [c["name"] for c in data["candidates"]] == ranking.names()
    assert data["candidates"][2]["scores"]["leep"] is None
    assert data["candidates"][0]["linear_probe"]["n_val"] == 36
    assert data["cost"]["fraction"] == pytest.approx(ranking.cost.fraction)
    assert data["cost"]["budget"] == 0.05 and data["cost"]["within_budget"] == ranking.cost.within_budget

    pyplot_before = "matplotlib.pyplot" in sys.modules
    path = ranking.plot(tmp_path / "charts" / "ranking.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before  # no pyplot, no global backend


def test_rank_by_another_primary_and_ties_keep_input_order() -> None:
    ranking = rank_candidates(_candidates(), primary="linear_probe", scores=["linear_probe", "logme"])
    accs = [row.scores["linear_probe"] for row in ranking]
    assert accs == sorted(accs, reverse=True) and ranking.scores == ("linear_probe", "logme")
    f, y = _blobs(n=60, d=4)
    same = CandidateFeatures(f, y)
    tied = rank_candidates({"b": same, "a": same}, scores=["logme"])
    assert tied.names() == ["b", "a"] and any("tie" in note for note in tied.notes)


def test_rank_candidates_refuses_bad_setups() -> None:
    candidates = _candidates()
    with pytest.raises(ConfigurationError, match="source_probs.*tv:bad"):
        rank_candidates(candidates, primary="leep")
    with pytest.raises(UnknownNameError, match="logme"):
        rank_candidates(candidates, scores=["logmee"])
    with pytest.raises(ConfigurationError, match="not among scores"):
        rank_candidates(candidates, primary="hscore", scores=["logme"])
    with pytest.raises(ConfigurationError, match="non-empty mapping"):
        rank_candidates({})
    with pytest.raises(ConfigurationError, match="CandidateFeatures"):
        rank_candidates({"x": (np.zeros((3, 2)), [0, 1, 0])})
    f, y = _blobs(n=60, d=4)
    with pytest.raises(DataError, match="different training labels"):
        rank_candidates({"a": CandidateFeatures(f, y), "b": CandidateFeatures(f, y[::-1])})
    broken = f.copy()
    broken[3, 1] = np.inf
    with pytest.raises(DataError, match="candidate 'b', LogME: features has 1 non-finite"):
        rank_candidates({"a": CandidateFeatures(f, y), "b": CandidateFeatures(broken, y)})
    with pytest.raises(ConfigurationError, match="together"):
        rank_candidates({"a": CandidateFeatures(f, y, forward_seconds_per_batch=0.1)})


# ---------------------------------------------------------------------------------------------
# Kendall's tau


def test_kendall_tau_b_hand_values_and_scipy() -> None:
    # Pairs of (1,2,3) vs (1,3,2): (1,2) concordant, (1,3) concordant, (2,3) discordant -> (2-1)/3.
    assert kendall_tau_b(np.array([1, 2, 3]), np.array([1, 3, 2])) == pytest.approx(1 / 3)
    assert kendall_tau_b(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 12).astype(float), rng.integers(0, 5, 12).astype(float)  # with ties
    assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)


def test_kendall_tau_of_a_ranking_against_measured_accuracies() -> None:
    ranking = rank_candidates(_candidates(), scores=["logme", "leep"])
    agree = {"timm:good": 0.95, "hf:mid": 0.80, "tv:bad": 0.40}
    assert kendall_tau(ranking, agree) == pytest.approx(1.0)
    assert kendall_tau(ranking, {k: -v for k, v in agree.items()}) == pytest.approx(-1.0)
    assert kendall_tau(ranking, {"timm:good": 0.9, "hf:mid": 0.8}, score="leep") == pytest.approx(1.0)
    with pytest.raises(DataError, match="not in the ranking"):
        kendall_tau(ranking, {"timm:good": 0.9, "timm:other": 0.8})
    with pytest.raises(DataError, match="no leep score"):
        kendall_tau(ranking, agree, score="leep")
    with pytest.raises(DataError, match="all values of one list are equal"):
        kendall_tau(ranking, {"timm:good": 0.5, "hf:mid": 0.5})
    with pytest.raises(UnknownNameError):
        kendall_tau(ranking, agree, score="hscore")  # not computed in this ranking
