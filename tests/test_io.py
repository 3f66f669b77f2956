"""Atomic writes: a full disk or a read-only folder never leaves a half-written file or loses the old one."""
import errno
import os
import subprocess
from pathlib import Path

import pytest

from treesae import io


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (a real full disk) where mounting is allowed, else a folder whose writes fail
    with ENOSPC after 64 KiB (an injected write error)."""
    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode == 0:
        yield d
        subprocess.run(["umount", str(d)], check=True)
        return
    real = Path.write_bytes

    def limited(self, data):
        if str(self).startswith(str(d)) and len(data) > 65536:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_bytes", limited)
        yield d


def test_full_disk_keeps_the_old_file(tiny_disk):
    f = tiny_disk / "metrics.json"
    io.write_json(f, {"nmse": 0.1})
    before = f.read_bytes()
    with pytest.raises(OSError, match=r"Could not write .*metrics\.json .*previous version, if any, is unchanged\. Free disk space"):
        io.write_bytes_atomic(f, b"x" * 200_000)
    assert f.read_bytes() == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["metrics.json"]  # no temporary left behind


def test_read_only_folder_is_named(tmp_path, monkeypatch):
    f = tmp_path / "out" / "table.csv"
    io.write_bytes_atomic(f, b"old\n")

    def read_only(self, data):  # root ignores chmod, so the error is injected
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(OSError, match=r"table\.csv \(Read-only file system\).*make .*out writable") as e:
        io.write_bytes_atomic(f, b"new\n")
    assert e.value.errno == errno.EROFS
    monkeypatch.undo()
    assert f.read_bytes() == b"old\n" and sorted(p.name for p in f.parent.iterdir()) == ["table.csv"]


def test_atomic_dir_keeps_the_old_directory_on_failure(tmp_path):
    out = tmp_path / "sae"
    with io.atomic_dir(out) as d:
        (d / "w").write_text("old")
    with pytest.raises(RuntimeError), io.atomic_dir(out) as d:
        (d / "w").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "w").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
