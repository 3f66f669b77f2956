"""Stage paper: ``paper/template.md`` (prose with Jinja2 placeholders) + ``paper/numbers.json`` ->
``paper/post.md`` (standard Markdown: ``![alt](../figures/<slug>.png)`` images with alt text, no HTML),
``paper/lesswrong.zip`` (the post, its images under ``images/`` and how to paste it into LessWrong),
``paper/index.html`` (self-contained: images embedded as data URIs) and, where Chromium exists,
``paper/paper.pdf``. Every number in the text comes from numbers.json; an unknown name is an error.
"""
import base64
import io
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import jinja2
import markdown

from .. import config, paths
from ..io import write_bytes_atomic
from ..verdicts import CLAIMS

CSS = """body{max-width:46rem;margin:2rem auto;padding:0 1rem;font:17px/1.55 Georgia,serif;color:#222}
h1,h2,h3{font-family:Helvetica,Arial,sans-serif;line-height:1.2}
img{max-width:100%;display:block;margin:1.5rem auto .5rem}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.2rem .5rem}
code{font-size:.9em;background:#f4f4f4;padding:0 .2em}
@media print{@page{margin:.5in}body{max-width:none;margin:0;padding:0}}"""  # figures (7 in at figures.DPI) print at full size


def _fmt(x, digits=3):
    """Significant digits, thousands separators for large numbers; "n/a" for a number that could not be measured
    (NaN, stored as null: e.g. a probe test where no pair qualified)."""
    if x is None:
        return "n/a"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if abs(x) >= 10 ** digits:  # no exponent: 153.2 -> "153" at 2 digits
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _pct(x, digits=1):
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


EXPERIMENTS = "experiments"  # experiments/<name>/: a published experiment (treesae.experiments)
IMAGES = r"\.\./((?:experiments/[\w.-]+/)?figures/[^)\"]+)"  # a figure's path as post.md (in paper/) links it
README = ("To post on LessWrong: turn on the Markdown editor (Account Settings, 'Activate Markdown Editor'), paste "
          "post.md into a new post, then upload each file of images/ in place of its ![...](images/...) line; or host "
          "images/ and run `python -m treesae.stages.paper --image-url <URL>` so that post.md links them.\n")


def figures():
    """``figure(slug, caption, alt, exp=None)`` for the template: a Markdown image of figures/<slug>.png (or
    experiments/<exp>/figures/<slug>.png) with its alt text and a numbered caption; a note where that run drew none
    (it trained nothing the figure shows)."""
    count = itertools.count(1)

    def figure(slug: str, caption: str, alt: str, exp: str | None = None) -> str:
        rel = f"{EXPERIMENTS}/{exp}/figures/{slug}.png" if exp else f"figures/{slug}.png"
        if not (paths.root() / rel).exists():
            return f"*(Figure `{slug}` is not drawn in this profile: it trained nothing the figure shows.)*\n"
        alt = re.sub(r"\s+", " ", alt).replace("[", "(").replace("]", ")").strip()
        return f"![{alt}](../{rel})\n\n**Figure {next(count)}.** {caption}\n"  # a paragraph: may follow a figure
    return figure


def env(template_dir: Path) -> jinja2.Environment:
    e = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir), undefined=jinja2.StrictUndefined,
                           keep_trailing_newline=True, autoescape=False)
    e.filters.update(fmt=_fmt, pct=_pct)
    e.globals["figure"] = figures()
    e.globals["claims"] = CLAIMS
    return e


def embed_images(page: str) -> str:
    """Every figure's <img src> becomes a data URI: the page fetches nothing."""
    def data(m):
        f = paths.root() / m.group(1)
        return f'src="data:image/{f.suffix[1:]};base64,{base64.b64encode(f.read_bytes()).decode()}"'
    return re.sub(rf'src="{IMAGES}"', data, page)


def unlink(md: str) -> str:
    """Links into the repository (``[text](../...)``, not images) as plain text: outside the repository (the
    bundle, the page and the PDF printed from it) they would point at this machine's files."""
    return re.sub(r"(?<!!)\[([^\]]+)\]\(\.\./[^)]+\)", r"\1", md)


def bundle(md: str, image_url: str | None = None) -> bytes:
    """lesswrong.zip: README.md (how to paste), post.md with its images under images/ (or at ``image_url``) and
    those images; links into the repository become plain text; fixed timestamps, so the same post gives the
    same bytes."""
    flat = lambda rel: rel.removeprefix(f"{EXPERIMENTS}/").replace("/figures/", "-").removeprefix("figures/")  # noqa: E731
    names = list(dict.fromkeys(re.findall(rf"!\[[^\]]*\]\({IMAGES}\)", md)))
    where = image_url.rstrip("/") + "/" if image_url else "images/"
    post = re.sub(rf"(!\[[^\]]*\]\(){IMAGES}\)", lambda m: f"{m.group(1)}{where}{flat(m.group(2))})", md)
    post = unlink(post)
    files = [("README.md", README.encode()), ("post.md", post.encode())]
    files += [(f"images/{flat(n)}", (paths.root() / n).read_bytes()) for n in names]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


def render(numbers: dict, template: Path | None = None, out_dir: Path | None = None,
           image_url: str | None = None, exps: dict | None = None) -> dict:
    """The paper from this run's ``numbers`` and the experiments' (``exps``: name -> numbers, see ``load``)."""
    template = Path(template or paths.root() / "paper" / "template.md")
    out_dir = Path(out_dir or paths.root() / "paper")
    md = env(template.parent).get_template(template.name).render(n=numbers, x=exps or {})
    body = embed_images(markdown.markdown(unlink(md), extensions=["tables", "fenced_code"]))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>TreeSAE</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    write_bytes_atomic(out_dir / "post.md", md.encode())
    write_bytes_atomic(out_dir / "lesswrong.zip", bundle(md, image_url))
    write_bytes_atomic(out_dir / "index.html", page.encode())
    out = {"markdown": out_dir / "post.md", "bundle": out_dir / "lesswrong.zip", "html": out_dir / "index.html"}
    pdf = print_pdf(out_dir / "index.html", out_dir / "paper.pdf")
    if pdf:
        out["pdf"] = pdf
    return out


def print_pdf(page: Path, pdf: Path) -> Path | None:
    """Chromium's print-to-PDF, when Chromium is installed (the browser tests install it), written atomically."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "paper.pdf"
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}",
                        "--no-pdf-header-footer", f"--print-to-pdf={out}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        data = out.read_bytes()
    # Chromium stamps the time of printing; a fixed stamp of the same length keeps the xref offsets valid and
    # the file bit-identical from run to run
    write_bytes_atomic(pdf, re.sub(rb"/(CreationDate|ModDate) \(D:\d{14}", rb"/\1 (D:20000101000000", data))
    return pdf


def listed(params: dict) -> list[str]:
    """The experiments the paper is assembled from: ``paper.experiments``."""
    return list((params.get("paper") or {}).get("experiments") or [])


def load(names=None) -> dict:
    """Each experiment's published numbers (experiments/<name>/numbers.json), by default those of
    ``paper.experiments``; a clear error when one is not published."""
    out = {}
    for name in listed(config.read_params(paths.root())) if names is None else names:
        f = paths.root() / EXPERIMENTS / name / "numbers.json"
        if not f.exists():
            raise FileNotFoundError(f"params.yaml: paper.experiments names {name!r}, but {f} does not exist: run it and "
                                    f"publish it (`make experiment EXP={name}`), or remove it from paper.experiments")
        out[name] = json.loads(f.read_text())
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-url", help="where the figures are hosted: lesswrong.zip's post.md links them there")
    out = render(json.loads((paths.root() / "paper" / "numbers.json").read_text()), image_url=ap.parse_args().image_url,
                 exps=load())
    print("\n".join(f"{k}: {v}" for k, v in out.items()))
