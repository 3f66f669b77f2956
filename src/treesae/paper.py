"""The paper: ``paper/template.md`` (prose with Jinja2 placeholders) + ``paper/numbers.json`` ->
``paper/post.md`` (LessWrong-ready Markdown), ``paper/index.html`` and, where Chromium exists,
``paper/paper.pdf``. Every number in the text comes from numbers.json; an unknown name is an error.
"""
import html
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2
import markdown

from . import paths
from .io import write_bytes_atomic
from .verdicts import CLAIMS

CSS = """body{max-width:46rem;margin:2rem auto;padding:0 1rem;font:17px/1.55 Georgia,serif;color:#222}
h1,h2,h3{font-family:Helvetica,Arial,sans-serif;line-height:1.2}img{max-width:100%}figure{margin:1.5rem 0}
figcaption{font-size:.9em;color:#555}table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.2rem .5rem}
code{font-size:.9em;background:#f4f4f4;padding:0 .2em}"""


def _fmt(x, digits=3):
    """Significant digits, thousands separators for large numbers."""
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if abs(x) >= 10 ** digits:  # no exponent: 153.2 -> "153" at 2 digits
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _pct(x, digits=1):
    return f"{100 * x:.{digits}f}%"


def figure(slug: str, caption: str) -> str:
    """A figure referenced by its slug: file figures/<slug>.png, label fig:<slug>; a note where stage 06 drew
    none (the profile trained nothing it shows)."""
    if not (paths.root() / "figures" / f"{slug}.png").exists():
        return f"*(Figure `{slug}` is not drawn in this profile: it trained nothing the figure shows.)*"
    return f'<figure id="fig:{slug}"><img src="../figures/{slug}.png" alt="{html.escape(slug)}"><figcaption><b>{slug}</b>. {caption}</figcaption></figure>'


def env(template_dir: Path) -> jinja2.Environment:
    e = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir), undefined=jinja2.StrictUndefined,
                           keep_trailing_newline=True, autoescape=False)
    e.filters.update(fmt=_fmt, pct=_pct)
    e.globals["figure"] = figure
    e.globals["claims"] = CLAIMS
    return e


def render(numbers: dict, template: Path | None = None, out_dir: Path | None = None) -> dict:
    template = Path(template or paths.root() / "paper" / "template.md")
    out_dir = Path(out_dir or paths.root() / "paper")
    md = env(template.parent).get_template(template.name).render(n=numbers)
    body = markdown.markdown(md, extensions=["tables", "fenced_code"])
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>TreeSAE</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    write_bytes_atomic(out_dir / "post.md", md.encode())
    write_bytes_atomic(out_dir / "index.html", page.encode())
    out = {"markdown": out_dir / "post.md", "html": out_dir / "index.html"}
    pdf = print_pdf(out_dir / "index.html", out_dir / "paper.pdf")
    if pdf:
        out["pdf"] = pdf
    return out


def print_pdf(page: Path, pdf: Path) -> Path | None:
    """Chromium's print-to-PDF, when Chromium is installed (the browser tests install it)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                        "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return pdf


if __name__ == "__main__":
    import json
    out = render(json.loads((paths.root() / "paper" / "numbers.json").read_text()))
    print("\n".join(f"{k}: {v}" for k, v in out.items()))
