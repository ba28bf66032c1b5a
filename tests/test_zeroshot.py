"""Zero-shot classification: logits of a fixed tiny model against a numpy hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nmtune._validation import NMTuneError
from nmtune.contrastive import CLIPModel, TextTransformer
from nmtune.zeroshot import ZeroShotClassifier

CLASSES = ("zero", "one", "two")
TEMPLATES = ("a photo of a {}.", "a {} digit", "{}")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    image = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    return CLIPModel(image, TextTransformer(width=16, layers=1, heads=2), embed_dim=6, image_dim=10)


def _unit(a, axis=-1):
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def test_logits_equal_hand_computation(model):
    images = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # The towers' raw outputs; everything after them is recomputed in numpy.
        raw_text = {
            c: model.encode_text(model.tokenize([t.format(c) for t in TEMPLATES]), normalize=False)
            .numpy()
            .astype(np.float64)
            for c in CLASSES
        }
        raw_image = model.encode_image(images, normalize=False).numpy().astype(np.float64)
    weights = np.stack([_unit(_unit(raw_text[c]).mean(axis=0)) for c in CLASSES], axis=1)
    expected = 100.0 * _unit(raw_image) @ weights

    clf = ZeroShotClassifier(model, CLASSES, TEMPLATES).fit()
    np.testing.assert_allclose(
        clf.decision_function(images.numpy()), expected, rtol=1e-4, atol=1e-4
    )
    # image features (unnormalised, already projected) give the same logits as images
    np.testing.assert_allclose(clf.decision_function(raw_image), expected, rtol=1e-4, atol=1e-4)
    proba = clf.predict_proba(raw_image)
    e = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, e / e.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    y = np.array([0, 1, 2, 0, 1])
    assert clf.score(raw_image, y) == np.mean(expected.argmax(axis=1) == y)


def test_bad_inputs_name_the_problem(model):
    with pytest.raises(NMTuneError, match="exactly one"):
        ZeroShotClassifier(model, CLASSES, ["no slot"]).fit()
    clf = ZeroShotClassifier(model, CLASSES, TEMPLATES).fit()
    with pytest.raises(NMTuneError, match="width 3"):
        clf.predict(np.zeros((2, 3)))
    with pytest.raises(NMTuneError, match="got shape"):
        clf.predict(np.zeros(3))
