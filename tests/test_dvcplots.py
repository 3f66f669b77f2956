"""`dvc plots show` renders offline, with every SAE's curve on one axis."""
import json
import re
import subprocess

import pandas as pd
import yaml

from treesae import dvcplots, paths


def test_page_inlines_vega_and_dvc_uses_it(tmp_path):
    page = dvcplots.page()  # make setup fetched the packages; the pins are checked again here
    html = page.read_text()
    assert "{plot_divs}" in html and "{scripts}" not in html and "cdn." not in html
    assert all(f"/* {n} {s['version']} */" in html for n, s in dvcplots.PACKAGES.items())

    repo = tmp_path / "ws"
    (repo / "paper").mkdir(parents=True)
    run = lambda *c: subprocess.run(c, cwd=repo, check=True, capture_output=True, text=True).stdout
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (repo / ".dvc" / "plots").mkdir()
    (repo / ".dvc" / "plots" / "runs.json").write_text((paths.REPO / ".dvc/plots/runs.json").read_text())
    spec = {"plots": yaml.safe_load((paths.REPO / "dvc.yaml").read_text())["plots"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec))
    rows = [dict(run=f"{a}-s0", architecture=a, tokens=t, nmse=1 / t, l0=8, dead_fraction=0.0)
            for a in ("topk", "tree") for t in (1024, 2048, 4096)]
    pd.DataFrame(rows).to_csv(repo / "paper" / "training_curves.csv", index=False)
    dvcplots.configure(repo, page)
    run("dvc", "plots", "show", "-o", "out")
    out = (repo / "out" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", out)  # nothing fetched: the scripts are inline
    assert out.count("vegaEmbed(") == len(spec["plots"])  # one plot per curve, not one per file
    nmse = json.loads(run("dvc", "plots", "show", "--json"))["data"]["training_nmse"][0]["content"]
    assert {v["run"] for v in nmse["data"]["values"]} == {"topk-s0", "tree-s0"}  # both SAEs on one axis
    assert nmse["encoding"]["color"]["field"] == "architecture"


def test_help_prints_usage_and_writes_nothing(tmp_path):
    import os
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "treesae.dvcplots", "--help"], capture_output=True, text=True,
                       env={**os.environ, "TREESAE_ROOT": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m treesae.dvcplots")
    assert not any(tmp_path.iterdir())  # no page fetched, no DVC config touched
