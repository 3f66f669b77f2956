import io
import json
import re
import shutil
import zipfile
import zlib

import jinja2
import numpy as np
import pytest

from treesae import experiments, paths
from treesae.stages import paper


def test_fmt_and_pct():
    assert paper._fmt(1_048_576) == "1,048,576" and paper._fmt(153.2, 2) == "153" and paper._fmt(4.56, 2) == "4.6"
    assert paper._fmt(0.032271, 4) == "0.03227" and paper._fmt(2048.0) == "2,048" and paper._pct(0.7118) == "71.2%"
    assert paper._fmt(None) == "n/a"  # NaN, stored as null: a number that could not be measured


def _numbers():
    f = paths.root() / "paper" / "numbers.json"
    if not f.exists():
        pytest.skip("no paper/numbers.json (set TREESAE_ROOT to build/smoke after `make smoke`)")
    return json.loads(f.read_text())


def test_template_renders_the_generated_numbers(tmp_path):
    n = _numbers()
    md = paper.env(paths.REPO / "paper").get_template("template.md").render(n=n, x={})
    assert "{{" not in md and "{%" not in md and "nan" not in md.lower().split()
    slugs = re.findall(r"!\[[^\]]+\]\(\.\./figures/([a-z_0-9]+)\.png\)", md)
    assert len(slugs) >= 12 and all((paths.root() / "figures" / f"{s}.png").exists() for s in slugs)
    assert f"{n['n_saes']} SAEs" in md and n["base.run"] in md


def test_template_fails_on_a_missing_number():
    n = _numbers()
    del n["matching.init.base.frac_above"]
    with pytest.raises(jinja2.UndefinedError, match="matching.init.base.frac_above"):
        paper.env(paths.REPO / "paper").get_template("template.md").render(n=n, x={})


def _render(tmp_path):
    n = _numbers()
    return paper.render(n, out_dir=tmp_path)


def test_post_is_standard_markdown_with_alt_text(tmp_path):
    """post.md: Markdown images only (no <figure> or <img>), each with alt text that describes it (not its file
    name), each a figure stage 06 drew, numbered in order."""
    out = _render(tmp_path)
    md = out["markdown"].read_text()
    assert "<figure" not in md and "<img" not in md and "<figcaption" not in md
    images = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md)
    assert len(images) >= 12 and all(len(alt) >= 30 and "_" not in alt for alt, _ in images), images
    assert all(u.startswith("../figures/") and (paths.root() / "figures" / u[11:]).exists() for _, u in images)
    assert re.findall(r"\*\*Figure (\d+)\.\*\*", md) == [str(i + 1) for i in range(len(images))]


def test_html_is_self_contained(tmp_path):
    out = _render(tmp_path)
    page = out["html"].read_text()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page) and "url(" not in page and "@import" not in page


def test_lesswrong_bundle(tmp_path):
    """lesswrong.zip: a README line on pasting, post.md with its images at images/<file> (all inside the zip) and
    no link out of the bundle, the same bytes when rendered again, and images at a URL when asked."""
    out = _render(tmp_path)
    z = zipfile.ZipFile(out["bundle"])
    names = set(z.namelist())
    post = z.read("post.md").decode()
    urls = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", post)
    assert "README.md" in names and "LessWrong" in z.read("README.md").decode() and urls
    assert all(u.startswith("images/") and u in names for u in urls) and "../" not in post
    assert {n for n in names if n.startswith("images/")} == set(urls)
    md = out["markdown"].read_text()
    assert "../" in md and post.count("\n#") == md.count("\n#") and len(urls) == md.count("](../figures/")
    first = out["bundle"].read_bytes()
    assert _render(tmp_path)["bundle"].read_bytes() == first
    hosted = paper.bundle(out["markdown"].read_text(), "https://example.org/f/")
    hosted = zipfile.ZipFile(io.BytesIO(hosted)).read("post.md")
    assert b"](https://example.org/f/frontier_nmse_l0.png)" in hosted


def _as_default_without_trees(n: dict) -> dict:
    """The smoke run's numbers as a run that trained no TreeSAE variant (the default profile's case)."""
    own = {k: v for k, v in n.items() if not k.startswith("treesae.")}
    own["verdict.treesae_hierarchy_lm"] = "not testable here"
    return own


def test_paper_is_assembled_from_an_experiment(tmp_path, monkeypatch):
    """A run that trained no TreeSAE variant takes sections 3 and 6 and the verdicts it cannot test from the first
    experiment that can; the post names the experiment, links its figures (embedded in the page, bundled under
    their own names) and no other section moves. A run with its own TreeSAE variants ignores the experiment."""
    n = _numbers()
    if "treesae.best_variant" not in n:
        pytest.skip("needs a run that trained TreeSAE variants as the experiment (TREESAE_ROOT=build/smoke)")
    root = tmp_path / "root"
    shutil.copytree(paths.root() / "figures", root / "figures")
    shutil.copytree(paths.root() / "figures", experiments.folder("lm", root) / "figures")
    monkeypatch.setenv("TREESAE_ROOT", str(root))
    exp = dict(n, **{"verdict.treesae_hierarchy_lm": "contradicted"})
    out = paper.render(_as_default_without_trees(n), template=paths.REPO / "paper" / "template.md",
                       out_dir=root / "paper", exps={"other": _as_default_without_trees(n), "lm": exp})
    md = out["markdown"].read_text()
    sec3, sec6 = md[md.index("## 3."):md.index("## 4.")], md[md.index("## 6."):md.index("## 7.")]
    assert "experiment [`lm`](../experiments/lm/)" in sec3 and "Not trained in this profile" not in sec3
    assert "](../experiments/lm/figures/treesae_levels.png)" in sec3
    assert "](../experiments/lm/figures/hierarchy_correlation.png)" in sec6 and "`lm`" in sec6
    verdict = next(line for line in md.splitlines() if "Cao et al.'s probe test with the gate lifted" in line)
    assert "**contradicted**" in verdict and "experiment [`lm`]" in verdict and "`other`" not in md
    assert "](../figures/frontier_nmse_l0.png)" in md  # the run's own sections stay its own
    page = out["html"].read_text()
    assert 'src="../' not in page and page.count('src="data:image/png;base64,') == md.count("![")
    z = zipfile.ZipFile(out["bundle"])
    assert "images/lm-treesae_levels.png" in z.namelist() and "images/frontier_nmse_l0.png" in z.namelist()
    assert "(images/lm-treesae_levels.png)" in z.read("post.md").decode()

    tpl = paths.REPO / "paper" / "template.md"
    alone = paper.render(n, tpl, tmp_path / "alone", exps={"lm": exp})["markdown"].read_text()
    assert "experiments/lm/figures" not in alone and "## 3. Three TreeSAE variants\n\nThe SAEs of this section" not in alone
    plain = paper.render(n, tpl, tmp_path / "b")["markdown"].read_text()
    assert alone[alone.index("## 1."):] == plain[plain.index("## 1."):]


def test_the_frontier_comes_from_an_experiment_with_several_k(tmp_path, monkeypatch):
    """A run that trained one k takes section 2's L0 frontier (figures, table, the best architecture per L0) from
    the first experiment that trained several, and names it; a run with its own frontier keeps it."""
    n = _numbers()
    if len(n["frontier.ks"]) < 2:
        pytest.skip("needs a run that trained several k as the experiment (TREESAE_ROOT=build/smoke)")
    root = tmp_path / "root"
    shutil.copytree(paths.root() / "figures", root / "figures")
    shutil.copytree(paths.root() / "figures", experiments.folder("fr", root) / "figures")
    monkeypatch.setenv("TREESAE_ROOT", str(root))
    one_k = dict(n, **{"frontier.ks": [n["frontier.ks"][-1]]})
    tpl = paths.REPO / "paper" / "template.md"
    md = paper.render(one_k, tpl, root / "paper", exps={"fr": n})["markdown"].read_text()
    sec2 = md[md.index("## 2."):md.index("## 3.")]
    assert "](../experiments/fr/figures/frontier_nmse_l0.png)" in sec2 and "experiment [`fr`](../experiments/fr/)" in sec2
    assert f"k={n['frontier.ks'][0]}: nMSE" in sec2  # the experiment's k, not only the run's own
    assert "](../figures/frontier_nmse_l0.png)" not in md
    own = paper.render(n, tpl, tmp_path / "own", exps={"fr": n})["markdown"].read_text()
    assert "experiments/fr" not in own


def test_paper_names_an_unpublished_experiment(monkeypatch, tmp_path):
    monkeypatch.setenv("TREESAE_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make experiment EXP=nope"):
        paper.load(["nope"])


def _pdf_images(pdf: bytes) -> list[tuple[float, int]]:
    """(width in inches on the page, width in pixels) of every image a Chromium PDF draws (content streams' cm
    transforms through q/Q; XObjects referenced by name)."""
    width = {int(m[0]): int(m[1]) for m in re.findall(rb"(\d+) 0 obj\s*<<[^>]*?/Subtype /Image[^>]*?/Width (\d+)", pdf)}
    names = {k.decode(): int(v) for k, v in re.findall(rb"/(X\d+) (\d+) 0 R", pdf)}
    out = []
    for m in re.finditer(rb"stream\r?\n", pdf):
        try:
            t = zlib.decompress(pdf[m.end():pdf.find(b"endstream", m.end())])
        except zlib.error:
            continue
        ctm, stack = np.eye(3), []
        for cm, do, op in re.findall(rb"((?:[-\d.]+\s+){6})cm\b|/(X\d+) Do\b|\b([qQ])\b", t):
            if op == b"q":
                stack.append(ctm)
            elif op == b"Q":
                ctm = stack.pop() if stack else ctm
            elif cm:
                a, b, c, d, e, f = map(float, cm.split())
                ctm = np.array([[a, b, 0], [c, d, 0], [e, f, 1]]) @ ctm
            elif names.get(do.decode()) in width:
                out.append((np.hypot(*ctm[0, :2]) / 72, width[names[do.decode()]]))
    return out


def test_pdf_shows_figures_at_least_at_their_size(tmp_path):
    """Every figure is printed at least as wide as it was drawn (DPI pixels per inch), so its text is at least
    figures.MIN_PT points on the page."""
    from treesae import figures as F
    out = _render(tmp_path)
    if "pdf" not in out:
        pytest.skip("no Chromium")
    images = _pdf_images(out["pdf"].read_bytes())
    assert len(images) == len(re.findall(r"!\[", out["markdown"].read_text()))
    assert all(inches >= px / F.DPI - 0.01 for inches, px in images), images


def test_pdf_is_bit_identical_from_run_to_run(tmp_path):
    """Chromium stamps the printing time into the PDF; print_pdf fixes it, so two prints are the same bytes."""
    a, b = _render(tmp_path / "a"), _render(tmp_path / "b")
    if "pdf" not in a:
        pytest.skip("no Chromium")
    assert b"/CreationDate (D:20000101000000" in a["pdf"].read_bytes()
    assert a["pdf"].read_bytes() == b["pdf"].read_bytes()
    assert b"file://" not in a["pdf"].read_bytes()  # no link to this machine's files: copies of a workspace print the same
    assert not list(tmp_path.glob("*/.*.tmp"))  # written atomically, nothing left beside it


def test_a_run_with_one_seed_renders_without_a_seed_share(tmp_path):
    """A run whose base configuration has one seed (experiment frontier) stores the seed share as null: the paper
    says nothing about it rather than failing."""
    n = {**_numbers(), "matching.seed_shared_ratio": None}
    n.pop("matching.seed_shared_ratio.lo", None)
    md = paper.render(n, out_dir=tmp_path)["markdown"].read_text()
    assert "differ only in\n  seed share" not in md and "seed share" not in md.split("## 1.")[0]
