"""features.extract and its cache: correctness against numpy, hits, resumption, tampering, keys."""

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from nmtune._io import load_feature_file
from nmtune._validation import NMTuneError
from nmtune.augment import ImageAugment, WordDropout, row_seeds, row_uniforms
from nmtune.backbones import CallableBackbone, TorchBackbone
from nmtune.backbones.base import Backbone
from nmtune.data.base import Dataset
from nmtune.features import CacheWarning, default_cache_dir, extract


class _Linear(nn.Module):
    """features = W · flatten(preprocessed image) + b: easy to reproduce in numpy."""

    in_channels = 1
    out_dim = 5

    def __init__(self, pixels: int = 64):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(pixels, self.out_dim)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))

    def forward(self, x):
        return self.fc(x.flatten(1))


class Counting(Backbone):
    """Delegates to a backbone, counting ``embed`` calls; raises once ``fail_after`` is reached."""

    def __init__(self, inner: Backbone, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        self.name, self.feature_dim, self.modality = inner.name, inner.feature_dim, inner.modality

    def embed(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return self.inner.embed(batch)

    def identity(self):
        return self.inner.identity()


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)[:, None]
    return Dataset(
        "digits",
        "all",
        images,
        d.target.astype(np.int64),
        tuple("0123456789"),
        "image",
        "digits-v1",
    )


@pytest.fixture
def backbone() -> TorchBackbone:
    return TorchBackbone(_Linear(), name="linear")


def _numpy_features(backbone: TorchBackbone, images: np.ndarray) -> np.ndarray:
    w = backbone.module.fc.weight.detach().numpy().astype(np.float64)
    b = backbone.module.fc.bias.detach().numpy()
    return ((images - 0.5) / 0.5).reshape(len(images), -1) @ w.T + b


def test_extract_matches_numpy_and_ignores_batch_size(digits, backbone):
    fs = extract(backbone, digits, cache_dir=False, batch_size=100, progress=False)
    assert fs.features.shape == (len(digits), 5) and fs.meta["cache"] == "off"
    np.testing.assert_allclose(fs.features, _numpy_features(backbone, digits.inputs), atol=1e-4)
    np.testing.assert_array_equal(fs.labels, digits.labels)
    other = extract(backbone, digits, cache_dir=False, batch_size=7, shard_rows=50, progress=False)
    np.testing.assert_allclose(other.features, fs.features, atol=1e-5)


def test_second_extract_is_a_memory_mapped_hit(digits, backbone, tmp_path):
    counting = Counting(backbone)
    first = extract(counting, digits, cache_dir=tmp_path, batch_size=256, progress=False)
    calls = counting.calls
    second = extract(counting, digits, cache_dir=tmp_path, batch_size=256, progress=False)
    assert (first.meta["cache"], second.meta["cache"]) == ("miss", "hit")
    assert counting.calls == calls, "a hit must not run the backbone"
    assert isinstance(second.features, np.memmap) and not second.features.flags.writeable
    np.testing.assert_array_equal(np.asarray(first.features), np.asarray(second.features))
    np.testing.assert_allclose(second.features, _numpy_features(backbone, digits.inputs), atol=1e-4)
    entry = tmp_path / first.meta["cache_key"]
    assert sorted(p.name for p in entry.iterdir()) == ["features.npy", "manifest.json"]


def test_interrupted_extraction_resumes_only_missing_shards(digits, backbone, tmp_path):
    n, shard, batch = len(digits), 400, 100  # 5 shards (4×400 + 197), 4 batches per full shard
    reference = extract(backbone, digits, cache_dir=False, progress=False).features
    crashing = Counting(backbone, fail_after=10)  # dies inside shard 2 (calls 8..11)
    with pytest.raises(KeyboardInterrupt):
        extract(
            crashing, digits, cache_dir=tmp_path, batch_size=batch, shard_rows=shard, progress=False
        )
    (entry,) = tmp_path.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == [
        "progress.json",
        "shard-00000.npy",
        "shard-00001.npy",
    ]

    resumed = Counting(backbone)
    fs = extract(
        resumed, digits, cache_dir=tmp_path, batch_size=batch, shard_rows=shard, progress=False
    )
    remaining_rows = n - 2 * shard
    assert resumed.calls == 4 + 4 + 2  # shards 2, 3 and the 197-row tail; never shards 0, 1
    assert resumed.calls * batch >= remaining_rows
    assert fs.meta["cache"] == "resumed"
    np.testing.assert_allclose(fs.features, reference, atol=1e-5)


def test_tampered_shard_is_detected_and_rebuilt(digits, backbone, tmp_path):
    reference = extract(backbone, digits, cache_dir=False, progress=False).features
    with pytest.raises(KeyboardInterrupt):
        extract(
            Counting(backbone, fail_after=3),
            digits,
            cache_dir=tmp_path,
            batch_size=100,
            shard_rows=200,
            progress=False,
        )
    (entry,) = tmp_path.iterdir()
    shard = entry / "shard-00000.npy"
    np.save(shard, np.zeros((1, 200, 5), dtype=np.float32))  # well-formed, wrong content
    resumed = Counting(backbone)
    with pytest.warns(CacheWarning, match="shard-00000.npy.*sha256"):
        fs = extract(
            resumed, digits, cache_dir=tmp_path, batch_size=100, shard_rows=200, progress=False
        )
    assert resumed.calls == 18  # shard 0 again + shards 1..8 (shard 1 never finished)
    np.testing.assert_allclose(fs.features, reference, atol=1e-5)


def test_tampered_final_file_and_manifest_are_rebuilt(digits, backbone, tmp_path):
    first = extract(backbone, digits, cache_dir=tmp_path, progress=False)
    expected = np.array(first.features)  # a copy: the memmap would see the tampering
    final = tmp_path / first.meta["cache_key"] / "features.npy"
    data = bytearray(final.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last stored float
    final.write_bytes(bytes(data))
    counting = Counting(backbone)
    with pytest.warns(CacheWarning, match="sha256 does not match"):
        again = extract(counting, digits, cache_dir=tmp_path, progress=False)
    assert counting.calls > 0 and again.meta["cache"] == "miss"
    np.testing.assert_array_equal(np.asarray(again.features), expected)

    manifest = tmp_path / first.meta["cache_key"] / "manifest.json"
    manifest.write_text("{not json")
    with pytest.warns(CacheWarning, match="manifest.json is unreadable"):
        assert extract(backbone, digits, cache_dir=tmp_path, progress=False).meta["cache"] == "miss"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extract(backbone, digits, cache_dir=tmp_path, progress=False).meta["cache"] == "hit"


def test_cache_key_changes_with_everything_that_changes_features(digits, backbone, tmp_path):
    def key(bb=backbone, ds=digits, **kw):
        return extract(bb, ds, cache_dir=tmp_path, progress=False, **kw).meta["cache_key"]

    base = key()
    assert key(batch_size=64) == base  # memory only
    assert key(seed=5) == base  # clean features do not depend on the seed
    two_views = key(views=2)
    assert len({base, two_views, key(views=3), key(views=2, seed=1)}) == 4
    assert key(views=2, augment=ImageAugment(max_degrees=5.0)) != two_views
    assert key(views=2, clean_view=True) != two_views
    assert key(clean_view=True) == base  # one view is clean anyway
    assert key(ds=digits.subset(500, seed=0)) != key(ds=digits.subset(500, seed=1))
    assert key(dtype="float16") != base
    other = TorchBackbone(_Linear(), name="linear")
    with torch.no_grad():
        other.module.fc.bias.add_(1.0)  # new weights => new identity => new key
    assert key(bb=other) != base


def test_views_are_augmented_seeded_and_batch_independent(digits, backbone):
    small = digits.subset(300, seed=0)
    fs = extract(backbone, small, views=2, seed=3, cache_dir=False, batch_size=64, progress=False)
    assert fs.features.shape == (2, 300, 5) and fs.n_views == 2
    assert not np.allclose(fs.features[0], fs.features[1])
    clean = extract(backbone, small, cache_dir=False, progress=False).features
    assert not np.allclose(fs.features[0], clean)
    same = extract(backbone, small, views=2, seed=3, cache_dir=False, batch_size=7, progress=False)
    np.testing.assert_allclose(same.features, fs.features, atol=1e-5)
    other = extract(backbone, small, views=2, seed=4, cache_dir=False, progress=False)
    assert not np.allclose(other.features, fs.features)


def test_a_clean_view_0_beside_the_augmented_views(digits, backbone):
    # View 0 is the one-view extraction; views 1..V-1 are the augmented views 1..V-1 of the
    # same seed, exactly as without clean_view.
    small = digits.subset(120, seed=0)
    fs = extract(backbone, small, views=3, clean_view=True, seed=2, cache_dir=False,
                 progress=False)
    assert fs.meta["clean_view"]
    clean = extract(backbone, small, cache_dir=False, progress=False).features
    augmented = extract(backbone, small, views=3, seed=2, cache_dir=False,
                        progress=False).features
    np.testing.assert_array_equal(fs.features[0], clean)
    np.testing.assert_array_equal(fs.features[1:], augmented[1:])
    with pytest.raises(NMTuneError, match="clean_view must be True or False"):
        extract(backbone, small, views=2, clean_view="yes", cache_dir=False, progress=False)


def test_row_seeds_do_not_depend_on_the_batch():
    full = row_seeds(7, 1, 0, 100)
    np.testing.assert_array_equal(full[30:45], row_seeds(7, 1, 30, 45))
    assert len(np.unique(full)) == 100
    assert not np.array_equal(full, row_seeds(7, 0, 0, 100))
    assert not np.array_equal(full, row_seeds(8, 1, 0, 100))
    u = row_uniforms(full, 1000)
    assert u.shape == (100, 1000) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.002


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - y0, x - x0
    top = (1 - fx) * img[y0, x0] + fx * img[y0, x0 + 1]
    bottom = (1 - fx) * img[y0 + 1, x0] + fx * img[y0 + 1, x0 + 1]
    return (1 - fy) * top + fy * bottom


def test_image_augment_identity_settings_and_a_pure_shift():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 1, 16, 16)).astype(np.float32)
    seeds = row_seeds(0, 0, 0, 3)
    same = ImageAugment(scale=(1.0, 1.0), max_shift=0.0, max_degrees=0.0)(x, seeds)
    np.testing.assert_allclose(same, x, atol=1e-5)
    # A pure translation samples pixel (i + dy, j + dx), dx = (2u - 1) * max_shift * side.
    out = ImageAugment(scale=(1.0, 1.0), max_shift=0.2, max_degrees=0.0)(x, seeds)
    u = row_uniforms(seeds, 4)
    for n in range(3):
        dx, dy = (2 * u[n, 2:] - 1) * 0.2 * 16
        for i, j in [(6, 6), (7, 9), (9, 8)]:
            expect = _bilinear(x[n, 0], i + dy, j + dx)
            assert out[n, 0, i, j] == pytest.approx(expect, abs=1e-5)


def test_word_dropout_is_seeded_and_keeps_a_word():
    texts = ["one two three four five six seven eight nine ten"] * 200 + ["solo"]
    seeds = row_seeds(0, 0, 0, len(texts))
    out = WordDropout(p=0.3)(texts, seeds)
    assert out == WordDropout(p=0.3)(texts, seeds)
    assert out[-1] == "solo" and all(o for o in out)
    kept = np.mean([len(o.split()) for o in out[:-1]]) / 10
    assert 0.65 < kept < 0.75
    assert WordDropout(p=0.0)(texts[:3], seeds[:3]) == texts[:3]
    assert all(len(o.split()) == 1 for o in WordDropout(p=1.0)(texts[:5], seeds[:5]))


def _text_dataset(n=40):
    texts = [f"sample number {i} about topic {i % 3}" for i in range(n)]
    return Dataset("toy", "train", texts, np.arange(n) % 3, ("a", "b", "c"), "text", "toy-v1")


def _hash_embed(texts):
    """A deterministic 'remote model': 4 numbers per text from its words."""
    return np.array(
        [[len(t), t.count(" "), sum(map(ord, t)) % 97, len(set(t))] for t in texts], float
    )


def test_text_views_go_through_word_dropout_on_a_black_box(tmp_path):
    bb = CallableBackbone(_hash_embed, name="hash", identity="hash-v1", batch_size=16)
    ds = _text_dataset()
    fs = extract(bb, ds, views=2, seed=0, cache_dir=tmp_path, progress=False)
    assert fs.features.shape == (2, 40, 4) and "WordDropout" in fs.meta["augment"]
    assert not np.array_equal(fs.features[0], fs.features[1])
    clean = extract(bb, ds, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(clean.features, _hash_embed(ds.inputs).astype(np.float32))


def test_custom_augment_callable(digits, backbone):
    def flip(batch, seeds):
        return batch[..., ::-1].copy()

    small = digits.subset(50, seed=0)
    fs = extract(backbone, small, views=2, augment=flip, cache_dir=False, progress=False)
    flipped = _numpy_features(backbone, small.inputs[..., ::-1])
    np.testing.assert_allclose(fs.features[1], flipped, atol=1e-4)
    assert "flip:code=" in fs.meta["augment"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"views": 0}, "views must be a positive integer"),
        ({"views": 2, "augment": None}, "needs an augmentation"),
        ({"views": 2, "augment": "strong"}, "augment must be"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
    ],
)
def test_bad_arguments_are_named(digits, backbone, kwargs, match):
    with pytest.raises(NMTuneError, match=match):
        extract(backbone, digits, cache_dir=False, progress=False, **kwargs)


def test_bad_backbone_outputs_are_named(digits, tmp_path):
    def nan_in_second_call(batch):
        nan_in_second_call.calls += 1
        return np.full((len(batch), 3), np.nan if nan_in_second_call.calls == 2 else 1.0)

    nan_in_second_call.calls = 0
    bb = CallableBackbone(
        nan_in_second_call, name="nanny", identity="v1", modality="image", batch_size=100
    )
    with pytest.raises(NMTuneError, match="NaN"):
        extract(bb, digits, cache_dir=tmp_path, batch_size=100, shard_rows=100, progress=False)
    (entry,) = tmp_path.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["progress.json", "shard-00000.npy"]
    with pytest.raises(NMTuneError, match="takes text inputs but dataset digits holds image"):
        extract(CallableBackbone(_hash_embed, name="h", identity="h"), digits, progress=False)


def test_save_round_trip_and_default_cache_dir(digits, backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("NMTUNE_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    fs = extract(backbone, digits.subset(100, seed=0), progress=False)
    assert (tmp_path / "cache" / fs.meta["cache_key"] / "manifest.json").is_file()
    fs.save(tmp_path / "f.npz")
    features, labels, meta = load_feature_file(tmp_path / "f.npz")
    np.testing.assert_array_equal(features, fs.features)
    np.testing.assert_array_equal(labels, fs.labels)
    assert meta["cache_key"] == fs.meta["cache_key"] and meta["backbone"] == "linear"
    manifest = json.loads((tmp_path / "cache" / fs.meta["cache_key"] / "manifest.json").read_text())
    assert manifest["shape"] == [100, 5]


# -- an unusable cache ------------------------------------------------------------------------


def _cache_is_a_file(tmp_path, monkeypatch, key):
    (tmp_path / "cache").write_text("not a directory")
    monkeypatch.setenv("NMTUNE_CACHE", str(tmp_path / "cache"))
    return None  # the default cache dir, from the environment


def _entry_is_a_file(tmp_path, monkeypatch, key):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / key).write_text("not a directory")
    return tmp_path / "cache"


def _refuse_files(monkeypatch, root: Path, error: OSError, after: int = 0) -> None:
    """Fail every file created under ``root`` once ``after`` have been: the cache creates each
    file as a ``tempfile.mkstemp`` temporary (then renames it), its write probe included."""
    real, made = tempfile.mkstemp, []

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and (Path(dir) == root or root in Path(dir).parents):
            if len(made) >= after:
                raise error
            made.append(dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _unwritable(tmp_path, monkeypatch, key):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o555)
    # chmod does not bind root (tests may run as root): refuse files there as the kernel would.
    _refuse_files(monkeypatch, root, PermissionError(13, "Permission denied", str(root)))
    return root


def _disk_full_mid_run(tmp_path, monkeypatch, key):
    # The write probe, shards 0 and 1 and their progress files fit; shard 2 does not.
    root = tmp_path / "cache"
    _refuse_files(monkeypatch, root, OSError(28, "No space left on device"), after=5)
    return root


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize(
    "make", [_cache_is_a_file, _entry_is_a_file, _unwritable, _disk_full_mid_run],
    ids=["cache-is-a-file", "entry-is-a-file", "unwritable", "disk-full-mid-run"],
)
def test_unusable_cache_falls_back_with_a_warning_and_correct_features(
    digits, backbone, tmp_path, monkeypatch, make, views
):
    data = digits.subset(600, seed=0)
    direct = extract(backbone, data, views=views, cache_dir=False, progress=False)
    cache_dir = make(tmp_path, monkeypatch, direct.meta["cache_key"])
    with pytest.warns(CacheWarning, match="cannot be used.*extracting without it"):
        fs = extract(backbone, data, views=views, cache_dir=cache_dir, shard_rows=128,
                     progress=False)
    assert fs.meta["cache"] == "off"
    assert fs.features.shape == direct.features.shape
    np.testing.assert_array_equal(np.asarray(fs.features), direct.features)


def test_a_backbone_oserror_is_not_taken_for_an_unusable_cache(digits, backbone, tmp_path):
    class Offline(Counting):
        def embed(self, batch):
            raise ConnectionError("embeddings server went away")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CacheWarning, no silent second extraction
        with pytest.raises(ConnectionError, match="went away"):
            extract(Offline(backbone), digits, cache_dir=tmp_path, progress=False)


def test_cli_extract_with_the_cache_pointing_at_a_file(digits, tmp_path, monkeypatch, capsys):
    import nmtune.data
    from nmtune import cli

    monkeypatch.setattr(nmtune.data, "load_dataset",
                        lambda name, split, limit=None, seed=0: digits.subset(limit, seed),
                        raising=False)
    monkeypatch.setattr(cli, "COMMANDS", ("extract",))
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("NMTUNE_CACHE", str(tmp_path / "cache"))
    argv = ["extract", "--backbone", "cnn4", "--backbone-arg", "width=4", "--dataset",
            "digits", "--split", "train", "--limit", "60", "--out"]
    with pytest.warns(CacheWarning, match="cannot be used"):
        assert cli.main([*argv, str(tmp_path / "a.npz")]) == 0
    assert "cache off" in capsys.readouterr().out
    assert cli.main([*argv, str(tmp_path / "b.npz"), "--no-cache"]) == 0
    a, b = (load_feature_file(tmp_path / name)[0] for name in ("a.npz", "b.npz"))
    np.testing.assert_array_equal(a, b)


# -- CLI ------------------------------------------------------------------------------------


def test_cli_extract_writes_npz_and_hits_the_cache(digits, tmp_path, monkeypatch, capsys):
    import nmtune.data
    from nmtune import cli

    calls = []

    def fake_load(name, split, limit=None, seed=0):
        calls.append((name, split, limit, seed))
        return digits.subset(limit, seed)

    monkeypatch.setattr(nmtune.data, "load_dataset", fake_load, raising=False)
    monkeypatch.setattr(cli, "COMMANDS", ("extract",))
    argv = [
        "extract",
        "--backbone",
        "cnn4",
        "--backbone-arg",
        "width=4",
        "--dataset",
        "digits",
        "--split",
        "train",
        "--limit",
        "120",
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(tmp_path / "f.npz"),
    ]
    assert cli.main(argv) == 0
    assert "cache miss: features (120, 32)" in capsys.readouterr().out
    assert calls == [("digits", "train", 120, 0)]
    assert cli.main(argv) == 0
    assert "cache hit" in capsys.readouterr().out
    features, labels, meta = load_feature_file(tmp_path / "f.npz")
    assert features.shape == (120, 32) and meta["backbone"] == "cnn4"
    out = argv.index("--out") + 1
    assert cli.main([*argv[:out], str(tmp_path / "v.npz"), "--views", "3", "--clean-view"]) == 0
    views, _, meta = load_feature_file(tmp_path / "v.npz")
    assert views.shape == (3, 120, 32) and meta["clean_view"]
    np.testing.assert_array_equal(views[0], features)
    assert cli.main([*argv[:out], str(tmp_path / "w.npz"), "--clean-view"]) == 2
    assert "--clean-view needs --views 2 or more" in capsys.readouterr().err

    assert cli.main([*argv[:2], "nope", *argv[3:]]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
    assert cli.main([*argv[:-1], str(tmp_path / "f.txt")]) == 2
    assert cli.main([*argv[:4], "oops", *argv[5:]]) == 2
    assert "--backbone-arg takes KEY=VALUE" in capsys.readouterr().err
