"""nmtune._hashing: the digests that name users' caches, against hashlib computed here.

A changed digest silently invalidates every existing feature cache and study cell, so each
function is checked against the formula it has always used, and two fingerprints are pinned
to the values the code produced before the hashing helpers moved into one module.
"""

import hashlib
import json

import numpy as np

from nmtune._hashing import content_digest, json_digest, sha256_file, sha256_parts
from nmtune.data import load_dataset


def test_sha256_parts_is_nul_separated_str_forms():
    want = hashlib.sha256(b"a\x001\x00None\x00").hexdigest()
    assert sha256_parts("a", 1, None) == want


def test_json_digest_is_sorted_json_with_str_fallback():
    obj = {"b": [1, 2.5, None], "a": "x"}
    assert json_digest(obj) == hashlib.sha256(b'{"a": "x", "b": [1, 2.5, null]}').hexdigest()
    assert json_digest([np.float32]) == json_digest([str(np.float32)])


def test_content_digest_hashes_bytes_then_tags():
    images = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    labels = np.array([0, 1, 0])
    inner = hashlib.sha256(b"|u1(3, 2, 2)" + images.tobytes() + labels.astype(np.int64).tobytes())
    assert content_digest(images, labels, "image", "train") == sha256_parts(
        inner.hexdigest(), "image", "train"
    )
    texts = ["héllo", "x"]
    inner = hashlib.sha256("héllo\0x\0".encode() + labels[:2].astype(np.int64).tobytes())
    assert content_digest(texts, labels[:2]) == sha256_parts(inner.hexdigest())


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 41
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_dataset_fingerprints_are_unchanged():
    # Values written by nmtune before the helpers moved: the feature cache keys include them.
    assert load_dataset("digits", "train").fingerprint == (
        "c7dafc17b572cd40df03df4e5185929a3ca9f1b1e589b6d7b7ec1f9e8fecfe91"
    )
    assert load_dataset("digits", "test", limit=50, seed=3).fingerprint == (
        "c7f4daa1c082dfbf8a53111b420e440751ea033487e616be60932f20181a5ec1"
    )


def test_json_digest_of_a_feature_key_payload_matches_the_old_formula():
    payload = {"format": 1, "views": 2, "seed": None, "dataset": ["digits", "train", "ab", 9]}
    old = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert json_digest(payload) == old
