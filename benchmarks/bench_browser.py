"""The feature browser from disk: its size, and how fast a feature page paints on a fresh page load.

    .venv/bin/python benchmarks/bench_browser.py                        # build/browser (make paper)
    .venv/bin/python benchmarks/bench_browser.py build/browser build/smoke/build/browser --pages 30

For each site: bytes and files on disk, then ``--pages`` feature pages drawn at random (fixed seed) over
every SAE and feature, each opened cold in headless Chromium (``about:blank``, then the page's URL from
``file://``): the time from navigation start to the first animation frame after the app shows the feature
(``performance.now()`` in the page). Target: at most 60 MB and every first paint under 1 s.
Needs Debian's ``chromium``; uses the tests' DevTools driver (tests/browser/cdp.py).
"""
import argparse
import json
import resource
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from cdp import Chromium  # noqa: E402

TARGET_MB, TARGET_S = 60.0, 1.0
PAINT = "new Promise(r => requestAnimationFrame(() => r(performance.now())))"


def saes(site: Path) -> list[dict]:
    s = (site / "data" / "index.js").read_text()
    return json.loads(s[s.index(",") + 1:s.rindex(")")])["saes"]


def size(site: Path) -> tuple[float, int]:
    files = [p for p in site.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2 ** 20, len(files)


def first_paints(b: Chromium, site: Path, pages: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    all_saes, out = saes(site), []
    for _ in range(pages):
        s = all_saes[int(rng.integers(len(all_saes)))]
        route = f"#/sae/{quote(s['name'], safe='')}/feature/{int(rng.integers(s['d_sae']))}"
        b.open("about:blank")
        b.open(site.resolve().as_uri() + "/index.html" + route)
        b.wait("document.body.dataset.view === 'feature'", timeout=30)
        out.append(b.eval(PAINT, await_promise=True) / 1000)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sites", nargs="*", default=["build/browser"])
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    with Chromium(width=1360, height=1000) as b:
        for name in args.sites:
            site = (ROOT / name).resolve()
            if not (site / "index.html").exists():
                sys.exit(f"{site} has no index.html: build it first (make paper, or make smoke for the smoke site)")
            mb, n_files = size(site)
            t = first_paints(b, site, args.pages, args.seed)
            rows.append(dict(site=name, mb=mb, files=n_files, saes=len(saes(site)), median=float(np.median(t)),
                             p95=float(np.quantile(t, 0.95)), max=max(t)))
        assert b.errors == [], b.errors
    print(f"{'site':36s} {'MB':>7s} {'files':>6s} {'SAEs':>5s} {'paint med':>10s} {'p95':>7s} {'max':>7s}")
    for r in rows:
        print(f"{r['site']:36s} {r['mb']:7.1f} {r['files']:6d} {r['saes']:5d} {r['median']:9.3f}s {r['p95']:6.3f}s "
              f"{r['max']:6.3f}s")
    print(f"targets: at most {TARGET_MB:.0f} MB, first paint under {TARGET_S:.0f} s (ratios below: measured / target)")
    for r in rows:
        tag = Path(r["site"]).parts[1] if r["site"].startswith("build/smoke") else "default"
        print(f"RATIO browser_{tag}_size_of_target {r['mb'] / TARGET_MB:.3f}")
        print(f"RATIO browser_{tag}_first_paint_max_of_target {r['max'] / TARGET_S:.3f}")
    print(f"PEAK_RSS_MB bench_browser {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
