"""``nmtune --help``, ``nmtune datasets`` and ``nmtune backbones`` start without heavy imports.

Each runs in a fresh interpreter, so what it imports is what a user's shell would pay for.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: Libraries that cost a second or more to import on this machine (torch above all).
HEAVY = ("torch", "scipy", "pandas", "matplotlib", "sklearn")


def _imported_after(code: str) -> list[str]:
    """The HEAVY modules loaded after running ``code`` in a fresh interpreter."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import sys
        print("loaded:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("loaded:")][-1]
    return [m for m in line.removeprefix("loaded:").split(",") if m]


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["datasets"], ["datasets", "digits~framed~mnistm", "--json"], ["backbones"]],
    ids=" ".join,
)
def test_listing_verbs_import_no_heavy_library(argv):
    loaded = _imported_after(f"""
        from nmtune.cli import main
        try:
            status = main({argv!r})
        except SystemExit as exc:  # --help exits
            status = exc.code
        assert status == 0, status
    """)
    assert loaded == [], f"nmtune {' '.join(argv)} imported {loaded}"


def test_torch_names_load_on_first_use():
    loaded = _imported_after("""
        import sys
        import nmtune.backbones as backbones
        import nmtune.data

        assert "torch" not in sys.modules
        assert backbones.TorchBackbone.__module__ == "nmtune.backbones.torch_backbone"
        assert "torch" in sys.modules
    """)
    assert "torch" in loaded
