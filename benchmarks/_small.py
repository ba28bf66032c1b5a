"""The study configs the study benchmarks run: a packaged one, or its smaller cut."""

from __future__ import annotations

import yaml


def study_config(name: str, small: bool):
    """``name`` (a packaged config or a path); ``small``: only seed 0 and noise ratios 0 and
    0.3 (2 of the default's 10 grid points, every stage and method kept)."""
    from nmtune.study import config_from_dict, resolve_config_path

    raw = yaml.safe_load(resolve_config_path(name).read_text())
    if small:
        raw["seeds"] = raw["seeds"][:1]
        raw["noise"]["ratios"] = [0.0, 0.3]
        raw["name"] = f"{raw['name']}-small"
    return config_from_dict(raw)
