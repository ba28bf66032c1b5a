"""Atomic writes: a writer killed mid-write leaves a temporary the next writer removes."""

import signal
import subprocess
import sys

from nmtune._io import atomic_path, write_bytes_atomic


def _killed_writer(target) -> None:
    """Run a writer in a subprocess and SIGKILL it while its temporary exists."""
    code = (
        "import sys, time; from nmtune._io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'partial'); print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "cell.json"
    _killed_writer(target)
    orphans = list(tmp_path.glob(".cell.json.*.tmp"))
    assert len(orphans) == 1 and not target.exists()

    write_bytes_atomic(target, b"done")
    assert target.read_bytes() == b"done"
    assert list(tmp_path.iterdir()) == [target]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "cell.json"
    other_host = tmp_path / ".cell.json.elsewhere.1.abc.tmp"  # a shared cache's other machine
    other_host.write_bytes(b"another machine's writer")
    with atomic_path(target) as outer:  # this process: alive while the inner write reaps
        outer.write_bytes(b"outer")
        write_bytes_atomic(target, b"inner")
        assert outer.exists()
    assert target.read_bytes() == b"outer"
    assert other_host.exists()
