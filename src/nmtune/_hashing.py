"""Content hashing: every sha256 that keys a cache, a cell or a fingerprint, in one place.

The hex strings these functions return name files on users' disks (the feature cache, study
cells, dataset fingerprints inside both), so their inputs and formats never change silently:
a changed digest is a cache miss for every existing user. Loads without torch.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import marshal
import os
from collections.abc import Callable
from typing import Any

import numpy as np


def sha256_parts(*parts: Any) -> str:
    """sha256 of the parts' ``str`` forms, each followed by a NUL byte, as hex."""
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as JSON with sorted keys; non-JSON values enter as ``str``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(inputs: np.ndarray | list[str], labels: np.ndarray, *tags) -> str:
    """Fingerprint of the data itself (plus ``tags``), so equal content gives equal digests.

    Hashing the bytes rather than a source's name means a re-packaged or re-downloaded copy
    of the same data keeps its feature cache, and a changed one cannot reuse it.
    """
    h = hashlib.sha256()
    if isinstance(inputs, np.ndarray):
        h.update(f"{inputs.dtype.str}{inputs.shape}".encode())
        h.update(np.ascontiguousarray(inputs).data)
    else:
        for text in inputs:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return sha256_parts(h.hexdigest(), *tags)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def callable_identity(fn: Callable) -> str:
    """A string naming what ``fn`` computes, for cache keys.

    Its ``identity`` attribute when it has one (give stateful callables one); otherwise its
    qualified name plus a hash of its compiled code, so editing the function's body changes it.
    Values captured in closures are not covered.
    """
    explicit = getattr(fn, "identity", None)
    if explicit:
        return str(explicit)
    plain = inspect.isfunction(fn) or inspect.ismethod(fn)
    target = fn if plain else type(fn)
    name = f"{getattr(target, '__module__', '?')}.{target.__qualname__}"
    code = getattr(fn if plain else type(fn).__call__, "__code__", None)
    if code is None:  # builtins and C extensions
        return name
    return f"{name}:code={hashlib.sha256(marshal.dumps(code)).hexdigest()[:16]}"


def state_digest(module) -> str:
    """sha256 over a torch module's state_dict (names, dtypes, shapes, values), in a fixed order.

    Hashing the live state, not a file, keeps the identity right for modules trained in memory
    or modified after loading.
    """
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{data.dtype}|{tuple(data.shape)}\0".encode())
        # Reinterpreting as bytes works for every dtype, bfloat16 included (numpy lacks it).
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
