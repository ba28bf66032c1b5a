"""Image–text pairs: caption-swap noise, open_clip CSV and WebDataset shards, synthetic pairs."""

from __future__ import annotations

import numpy as np
import pytest

from nmtune import noise
from nmtune._validation import NMTuneError


def _swap_partner(noisy, captions):
    """For each changed position i, the position whose original caption i now holds."""
    where = {c: i for i, c in enumerate(captions)}  # captions unique in the callers
    return {i: where[c] for i, c in enumerate(noisy) if c != captions[i]}


@pytest.mark.parametrize("n,rate", [(10, 0.2), (10, 0.3), (101, 0.3), (7, 1.0), (1000, 0.05)])
def test_caption_swap_exact_count_as_disjoint_swaps(n, rate):
    captions = [f"caption {i}" for i in range(n)]
    noisy, changed = noise.caption_swap(captions, rate, seed=3)
    count = int(np.floor(rate * n + 0.5))
    assert changed.sum() == count and changed.mean() == count / n
    assert sorted(noisy) == sorted(captions)
    partner = _swap_partner(noisy, captions)
    assert sorted(partner) == np.flatnonzero(changed).tolist()
    # Every change is a 2-cycle, except one 3-cycle when the count is odd.
    cycle_lengths = []
    seen = set()
    for start in partner:
        if start in seen:
            continue
        length, i = 0, start
        while i not in seen:
            seen.add(i)
            i = partner[i]
            length += 1
        cycle_lengths.append(length)
    assert sorted(cycle_lengths) == [2] * (count // 2 - (count % 2)) + [3] * (count % 2)


def test_caption_swap_never_swaps_equal_texts_under_heavy_duplication():
    rng = np.random.default_rng(0)
    captions = [f"a photo of a {c}" for c in rng.integers(0, 4, size=400)]
    for seed in range(5):
        noisy, changed = noise.caption_swap(captions, 0.3, seed=seed)
        differs = np.array([a != b for a, b in zip(noisy, captions, strict=True)])
        assert differs.sum() == 120 and np.array_equal(differs, changed)


def test_caption_swap_seeds():
    captions = [f"c{i}" for i in range(50)]
    first = noise.caption_swap(captions, 0.2, seed=1)[0]
    assert noise.caption_swap(captions, 0.2, seed=1)[0] == first
    assert noise.caption_swap(captions, 0.2, seed=2)[0] != first


@pytest.mark.parametrize(
    "captions,rate,match",
    [
        (["a"] * 9 + ["b"], 0.4, "repeats 9 times"),
        (["a", "b"] * 5, 0.3, "repeats"),  # odd count needs three distinct texts
        ([["unhashable"]] * 4, 0.5, "hashable"),
    ],
)
def test_caption_swap_rejects_impossible_swaps(captions, rate, match):
    with pytest.raises(NMTuneError, match=match):
        noise.caption_swap(captions, rate)
