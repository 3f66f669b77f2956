import json
import re

import jinja2
import pytest

from treesae import paper, paths


def test_fmt_and_pct():
    assert paper._fmt(1_048_576) == "1,048,576" and paper._fmt(153.2, 2) == "153" and paper._fmt(4.56, 2) == "4.6"
    assert paper._fmt(0.032271, 4) == "0.03227" and paper._fmt(2048.0) == "2,048" and paper._pct(0.7118) == "71.2%"


def _numbers():
    f = paths.root() / "paper" / "numbers.json"
    if not f.exists():
        pytest.skip("no paper/numbers.json (set TREESAE_ROOT to build/smoke after `make smoke`)")
    return json.loads(f.read_text())


def test_template_renders_the_generated_numbers(tmp_path):
    n = _numbers()
    md = paper.env(paths.REPO / "paper").get_template("template.md").render(n=n)
    assert "{{" not in md and "{%" not in md and "nan" not in md.lower().split()
    slugs = re.findall(r'<figure id="fig:([a-z_0-9]+)"', md)
    assert len(slugs) >= 12 and all((paths.root() / "figures" / f"{s}.png").exists() for s in slugs)
    assert f"{n['n_saes']} SAEs" in md and n["base.run"] in md


def test_template_fails_on_a_missing_number():
    n = _numbers()
    del n["matching.init.base.frac_above"]
    with pytest.raises(jinja2.UndefinedError, match="matching.init.base.frac_above"):
        paper.env(paths.REPO / "paper").get_template("template.md").render(n=n)
