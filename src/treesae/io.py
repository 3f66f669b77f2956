"""Atomic file and directory writes, checksums and deterministic JSON."""
import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path


def sha256_file(path, chunk=1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_replace(tmp: Path, dst: Path):
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def write_bytes_atomic(path, data: bytes):
    """Write through a temporary sibling and one rename: ``path`` holds the old bytes or the new ones.
    A failed write (full disk, read-only folder) leaves the old file and no temporary behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        fsync_replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"Could not write {path} ({e.strerror or e}); the previous version, if any, is "
                               f"unchanged. Free disk space or make {path.parent} writable, then rerun.") from e


def write_json(path, obj):
    """Sorted keys, fixed indentation: the same object always gives the same bytes."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_dir(out: Path):
    """Yield a temporary sibling directory; on success it replaces ``out`` in one rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


class JsonStore:
    """Finished rows of a long computation on disk, one ``root/<key>.json`` per key, each written atomically,
    so an interrupted stage resumes with what it had. An entry that does not parse, holds another key or
    fails ``check(row)`` reads as missing (it is recomputed). Distinct keys never share a temporary file,
    so threads may write concurrently."""

    def __init__(self, root, check=None):
        self.root, self.check = Path(root), check

    def get(self, key):
        try:
            d = json.loads((self.root / f"{key}.json").read_text())
            if d["key"] == key and isinstance(d["row"], dict) and (self.check is None or self.check(d["row"])):
                return d["row"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def __setitem__(self, key, row):
        write_bytes_atomic(self.root / f"{key}.json", json.dumps(dict(key=key, row=row)).encode())  # row order kept


class ArrayStore:
    """Like ``JsonStore`` for dicts of numpy arrays and scalars (``root/<key>.npz``, no pickle); a damaged
    entry reads as missing. Scalars come back as Python scalars."""

    def __init__(self, root):
        self.root = Path(root)

    def get(self, key):
        import numpy as np
        try:
            with np.load(self.root / f"{key}.npz", allow_pickle=False) as z:
                return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def __setitem__(self, key, arrays: dict):
        import io as _io

        import numpy as np
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(self.root / f"{key}.npz", buf.getvalue())
