"""Broken feature files: ``nmtune analyze`` and ``nmtune tune`` answer one line and exit 2.

Truncated or CRC-corrupted zips, an ``.npy`` renamed ``.npz`` and an npy header claiming an
absurd shape are rejected before any array is allocated.
"""

import io
import zipfile

import numpy as np
import pytest

from nmtune import _io
from nmtune._io import load_feature_file, save_feature_file
from nmtune._validation import NMTuneError
from nmtune.cli import main


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "good.npz"
    save_feature_file(path, rng.normal(size=(30, 8)), np.arange(30) % 3)
    return path


def _truncated(good, path):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _crc_corrupted(good, path):
    data = bytearray(good.read_bytes())
    # Flip a byte inside the stored features.npy payload, well past its npy header.
    data[data.index(b"features.npy") + 400] ^= 0xFF
    path.write_bytes(bytes(data))


def _npy_renamed(good, path):
    with open(path, "wb") as fh:
        np.save(fh, np.ones((30, 8)))


def _header(shape, dtype="<f8") -> bytes:
    """An npy header (no data) claiming ``shape`` and ``dtype``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def _huge_header(good, path, member="features.npy", compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(member, _header((10**7, 10**7)) + b"\0" * 64)
        other = "labels.npy" if member == "features.npy" else "features.npy"
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((4, 2)) if other == "features.npy" else np.zeros(4))
        zf.writestr(other, buffer.getvalue())


def _huge_compressed(good, path):
    _huge_header(good, path, compression=zipfile.ZIP_DEFLATED)


def _huge_labels(good, path):
    _huge_header(good, path, member="labels.npy")


def _object_dtype(good, path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("features.npy", _header((2, 2), "|O") + b"\0" * 32)
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(2))
        zf.writestr("labels.npy", buffer.getvalue())


BROKEN = {
    "truncated": (_truncated, "truncated or not a zip"),
    "crc": (_crc_corrupted, "CRC"),
    "npy-renamed": (_npy_renamed, "a single .npy array, not an .npz"),
    "huge-header": (_huge_header, "claims shape (10000000, 10000000)"),
    "huge-deflated": (_huge_compressed, "claims shape (10000000, 10000000)"),
    "huge-labels": (_huge_labels, "claims shape (10000000, 10000000)"),
    "object-dtype": (_object_dtype, "dtype object"),
}


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if numpy is asked to read an array body from a bad file."""
    real = np.lib.format.read_array

    def guarded(fp, *args, **kwargs):
        array = real(fp, *args, **kwargs)
        assert array.nbytes < 10**6, "a large array was allocated"
        return array

    monkeypatch.setattr(np.lib.format, "read_array", guarded)


@pytest.mark.parametrize("name", list(BROKEN))
def test_loader_names_the_problem(good, tmp_path, name, no_allocation):
    make, message = BROKEN[name]
    path = tmp_path / "bad.npz"
    make(good, path)
    with pytest.raises(NMTuneError) as info:
        load_feature_file(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("verb", ["analyze", "tune"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_cli_answers_one_line_exit_2(good, tmp_path, capsys, verb, name, no_allocation):
    make, message = BROKEN[name]
    path = tmp_path / "bad.npz"
    make(good, path)
    argv = (["analyze", str(path)] if verb == "analyze" else
            ["tune", "--train", str(path), "--test", f"id={good}", "--method", "lp"])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"nmtune {verb}: error: ")
    assert err.count("\n") == 1 and message in err


def test_a_good_file_round_trips_through_the_checked_reader(good):
    features, labels, meta = load_feature_file(good)
    with np.load(good) as npz:  # numpy's own reader is the reference
        np.testing.assert_array_equal(features, npz["features"])
        np.testing.assert_array_equal(labels, npz["labels"])
    assert meta == {}


def test_compressed_npz_is_read(tmp_path):
    path = tmp_path / "c.npz"
    X, y = np.arange(40.0).reshape(10, 4), np.arange(10) % 2
    np.savez_compressed(path, features=X, labels=y)
    features, labels, _ = load_feature_file(path)
    np.testing.assert_array_equal(features, X)
    np.testing.assert_array_equal(labels, y)


def test_file_larger_than_memory_is_refused_before_reading(good, monkeypatch, no_allocation):
    monkeypatch.setattr(_io, "available_memory", lambda: 1000)
    with pytest.raises(NMTuneError, match="available"):
        load_feature_file(good)
