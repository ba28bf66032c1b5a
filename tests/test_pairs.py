"""Image–text pairs: caption-swap noise, open_clip CSV and WebDataset shards, synthetic pairs."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from nmtune import noise
from nmtune._validation import NMTuneError
from nmtune.data.pairs import (
    Pair,
    expand_shards,
    image_attributes,
    open_pairs,
    read_csv,
    read_shards,
    synthetic_pairs,
    write_csv,
    write_shards,
)


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


# ---------------------------------------------------------------- pair formats


@pytest.fixture(scope="module")
def pair_set():
    return synthetic_pairs("digits", "test", limit=23, seed=1)


def test_shards_and_csv_give_the_same_pairs(pair_set, tmp_path):
    originals = list(pair_set.pairs())
    pattern = write_shards(originals, tmp_path / "shards", per_shard=5)
    assert pattern == str(tmp_path / "shards" / "shard-{000000..000004}.tar")
    table = write_csv(originals, tmp_path / "table" / "pairs.tsv")
    from_shards, from_csv = list(read_shards(pattern)), list(read_csv(table))
    assert from_shards == from_csv == originals
    assert list(open_pairs(pattern)) == list(open_pairs(table)) == originals
    for pair, image in zip(from_csv, pair_set.images, strict=True):
        np.testing.assert_array_equal(pair.decode(), np.rint(image * 255) / np.float32(255))
    # the table is open_clip's layout: header filepath<TAB>title, paths relative to the table
    lines = table.read_text().splitlines()
    assert lines[0] == "filepath\ttitle"
    assert lines[1] == f"images/00000000.png\t{pair_set.captions[0]}"


def test_shard_writer_is_deterministic(pair_set, tmp_path):
    pairs = list(pair_set.pairs())[:4]
    write_shards(pairs, tmp_path / "a")
    write_shards(pairs, tmp_path / "b")
    assert (tmp_path / "a/shard-000000.tar").read_bytes() == (
        tmp_path / "b/shard-000000.tar"
    ).read_bytes()


def test_csv_keys_and_separator_configurable(pair_set, tmp_path):
    pairs = list(pair_set.pairs())[:3]
    path = write_csv(pairs, tmp_path / "p.csv", img_key="img", caption_key="cap", sep=";")
    assert path.read_text().splitlines()[0] == "img;cap"
    assert list(read_csv(path, img_key="img", caption_key="cap", sep=";")) == pairs
    with pytest.raises(NMTuneError, match=r"lacks column\(s\) \['filepath', 'title'\]"):
        next(read_csv(path, sep=";"))


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shard_reader_groups_by_key_and_ignores_other_members(tmp_path):
    _tar(
        tmp_path / "s.tar",
        [
            ("d/a.jpg", b"J"),
            ("d/a.txt", b"one\n"),
            ("d/a.json", b"{}"),
            ("b.png", b"P"),
            ("b.txt", b"two"),
        ],
    )
    got = list(read_shards(str(tmp_path / "s.tar")))
    assert got == [Pair("d/a", b"J", "jpg", "one"), Pair("b", b"P", "png", "two")]
    _tar(tmp_path / "bad.tar", [("c.png", b"P")])
    with pytest.raises(NMTuneError, match=r"'c' has \['png'\]"):
        list(read_shards([str(tmp_path / "bad.tar")]))
    with pytest.raises(NMTuneError, match="shard not found"):
        list(read_shards(str(tmp_path / "missing-{0..1}.tar")))


def test_expand_shards():
    assert expand_shards("x/s-{08..11}.tar") == [f"x/s-{i:02d}.tar" for i in (8, 9, 10, 11)]
    assert expand_shards("{a,b}-{0..1}.tar::c.tar") == [
        "a-0.tar",
        "a-1.tar",
        "b-0.tar",
        "b-1.tar",
        "c.tar",
    ]
    with pytest.raises(NMTuneError, match="backwards"):
        expand_shards("s-{3..1}.tar")


# ---------------------------------------------------------------- synthetic pairs


def test_image_attributes_match_hand_measurements():
    images = np.zeros((2, 1, 28, 28), dtype=np.float32)
    images[0, 0, 5:15, 10:13] = 0.8  # a vertical bar 3 wide, 10 high
    for i in range(20):
        images[1, 0, 23 - i, 4 + i] = 1.0  # one-pixel diagonal rising to the right
    got = image_attributes(images)
    # bar: 30 ink pixels, 8 interior (middle column minus its ends) -> 22 on the boundary
    assert got["thick"][0] == pytest.approx(2 * 30 / 22)
    assert got["bright"][0] == pytest.approx(0.8)
    assert got["width"][0] == pytest.approx(3 / 28) and got["width"][1] == pytest.approx(20 / 28)
    assert got["slant"][0] == pytest.approx(0.0) and got["slant"][1] == pytest.approx(1.0)


def test_synthetic_pairs_are_labelled_and_carded(pair_set):
    assert len(pair_set) == 23 and len(pair_set.images) == 23
    for caption, label in zip(pair_set.captions, pair_set.labels, strict=True):
        assert f"handwritten digit {pair_set.classes[label]}" in caption
    assert "NOT human-written" in pair_set.card and "digits" in pair_set.card
    again = synthetic_pairs("digits", "test", limit=23, seed=1)
    assert again.captions == pair_set.captions


def test_noisy_pairs_export_for_open_clip(pair_set, tmp_path):
    noisy, changed = pair_set.swap_captions(0.4, seed=0)
    assert changed.sum() == round(0.4 * 23) and "0.3913 of the pairs" in noisy.card
    exported = list(read_shards(write_shards(noisy.pairs(), tmp_path)))
    got = np.array([p.caption for p in exported])
    np.testing.assert_array_equal(got != np.array(pair_set.captions), changed)
    assert [p.image for p in exported] == [p.image for p in pair_set.pairs()]
