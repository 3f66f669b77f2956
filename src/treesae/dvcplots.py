"""`dvc plots show` / `dvc plots diff` pages that render offline.

DVC's page loads vega, vega-lite and vega-embed from a CDN, so without the network it is blank. ``python -m
treesae.dvcplots [REPO]`` (run by ``make setup``, and for every workspace) fetches the three npm packages at
pinned versions with their client (sha256-checked, as the corpora are), writes ``build/dvc_plots_page.html``: an
HTML template for DVC with the scripts inlined, and points the repository's local DVC config
(``plots.html_template`` in ``.dvc/config.local``, not committed) at it. The plots themselves are dvc.yaml's
top-level ``plots``: the training curves of every SAE on one axis, coloured by architecture
(``.dvc/plots/runs.json``, a vega-lite template of our own).
"""
import argparse
import subprocess
import tarfile
from pathlib import Path

from . import paths
from .io import fetch_package, write_bytes_atomic

PACKAGES = {  # name: npm package at a pinned version, and the script it ships
    "vega": dict(client="npm", package="vega", version="5.30.0", file="vega-5.30.0.tgz", script="package/build/vega.min.js",
                 sha256="96352a8d06d34f3263ff60404024a8e8acb9bcbcbb2e4a54e8df0bdd3ffa9a89"),
    "vega-lite": dict(client="npm", package="vega-lite", version="5.21.0", file="vega-lite-5.21.0.tgz",
                      script="package/build/vega-lite.min.js",
                      sha256="48e7a352a7d49811c3d1e15c400f5f9386b16e2affd1835939eb41b3f30b88ff"),
    "vega-embed": dict(client="npm", package="vega-embed", version="6.26.0", file="vega-embed-6.26.0.tgz",
                       script="package/build/vega-embed.min.js",
                       sha256="74b6ffafdb4c5205a17b03ae53100070b656da3698f25fce24412f3ce3e42280"),
}
PAGE = "build/dvc_plots_page.html"


def page(cache_dir: Path | None = None) -> Path:
    """The template page under the repository (fetching the packages into ``build/npm`` once)."""
    cache_dir = Path(cache_dir or paths.REPO / "build" / "npm")
    scripts = []
    for name, src in PACKAGES.items():
        tgz = fetch_package(src, cache_dir, f"{name} {src['version']} (offline DVC plot pages)", "PACKAGES in src/treesae/dvcplots.py")
        with tarfile.open(tgz) as t:
            js = t.extractfile(src["script"]).read().decode("utf-8").replace("</script", "<\\/script")
        scripts.append(f"<script>/* {name} {src['version']} */\n{js}\n</script>")
    # DVC fills {plot_divs} (and {refresh_tag}); its {scripts} placeholder, the CDN tags, is left out on purpose
    html = ("<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<title>DVC plots</title>\n" + "\n".join(scripts) +
            "\n<style>body {font-family: sans-serif} table {border-spacing: 15px}</style>\n</head>\n<body>\n"
            "{plot_divs}\n</body>\n</html>\n")
    out = paths.REPO / PAGE
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, html.encode("utf-8"))
    return out


def configure(repo: Path, page_path: Path) -> None:
    """Point ``repo``'s local DVC config at the page (``dvc plots show`` then renders offline there)."""
    subprocess.run(["dvc", "config", "--local", "plots.html_template", str(Path(page_path).resolve())], cwd=repo,
                   check=True, capture_output=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m treesae.dvcplots", description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", nargs="?", type=Path, default=paths.REPO, help="repository or workspace (default: this one)")
    target = ap.parse_args().repo
    p = page()
    configure(target, p)
    print(f"{target}: dvc plots show renders offline ({p}, {p.stat().st_size / 1e6:.1f} MB)")
