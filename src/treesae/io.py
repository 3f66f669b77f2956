"""Atomic file and directory writes, checksums, deterministic JSON, and pinned packages fetched by their clients."""
import contextlib
import hashlib
import io as _io
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import numpy as np


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
        raise write_error(path, e) from e


def write_error(path: Path, e: OSError) -> OSError:
    """A failed write (full disk, read-only folder) that names the file and the fix."""
    return OSError(e.errno, f"Could not write {path} ({e.strerror or e}); the previous version, if any, is "
                            f"unchanged. Free disk space or make {path.parent} writable, then rerun.")


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
        try:
            with np.load(self.root / f"{key}.npz", allow_pickle=False) as z:
                return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def __setitem__(self, key, arrays: dict):
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(self.root / f"{key}.npz", buf.getvalue())


def client_run(cmd, cwd, what):
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"Fetching {what} needs `{cmd[0]}`, which is not installed. "
                           f"Install it ({'apt-get install npm' if cmd[0] == 'npm' else 'apt-get install apt dpkg'}) "
                           "or run `make setup`.")
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed while fetching {what}:\n{res.stderr.strip()[-2000:]}")


def _registry_download(url, dest, what):
    """The registry tarball ``npm pack`` would fetch, for machines without npm (e.g. nodesource's node)."""
    try:
        with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise RuntimeError(f"Downloading {what} from {url} failed ({e}); npm is not installed, so the tarball "
                           "is fetched directly. Check the network (HTTPS_PROXY) or install npm.") from e


def fetch_package(src: dict, dest_dir: Path, what: str, pins_at: str) -> Path:
    """``dest_dir / src["file"]``, fetched once by the package's ordinary client (``client``: "npm" for ``npm
    pack``, the registry tarball where npm is missing; "apt" for ``apt-get download``) at the pinned ``package``
    and ``version``, and refused unless its sha256 is ``src["sha256"]`` (``pins_at`` names where the pins live)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / src["file"]
    if out.exists() and sha256_file(out) == src["sha256"]:
        return out
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        pkg, ver = src["package"], src["version"]
        if src["client"] == "npm" and shutil.which("npm") is None:
            _registry_download(f"https://registry.npmjs.org/{pkg}/-/{pkg.split('/')[-1]}-{ver}.tgz", Path(tmp) / src["file"], what)
        elif src["client"] == "npm":
            client_run(["npm", "pack", f"{pkg}@{ver}", "--silent"], tmp, what)
        else:
            client_run(["apt-get", "download", f"{pkg}={ver}"], tmp, what)
        got = Path(tmp) / src["file"]
        if not got.exists():
            raise RuntimeError(f"{what}: the client did not produce {src['file']} (got {sorted(p.name for p in Path(tmp).iterdir())}).")
        digest = sha256_file(got)
        if digest != src["sha256"]:
            raise RuntimeError(f"{what}: sha256 {digest} of {src['file']} does not match the pinned {src['sha256']}. "
                               "The registry served different bytes; refusing to use them. If the upstream "
                               f"package legitimately changed, update {pins_at}.")
        got.replace(out)
    return out


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0")


def set_offline():
    """The default run never touches the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
