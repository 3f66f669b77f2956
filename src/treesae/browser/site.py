"""Write the browser's data (``extract``) as a static site that works from ``file://``.

Layout (all data files are JavaScript that calls ``window.__load(key, payload)``, loaded through
``<script>`` tags, because Chromium blocks ``fetch()`` of local files)::

    index.html app.js style.css          the single-page app (hash routes #/sae/<name>/feature/<id>)
    data/index.js                        every SAE: meta row, sizes, levels, shard layout
    data/vocab.js                        token id -> string for every token shown
    data/saes/<slug>/list.js             the feature list: columnar arrays (freq, mean, ...) for sort/search
    data/saes/<slug>/f<shard>.js         features [shard*size, (shard+1)*size): contexts, histogram,
                                         position profile, logit effect, matches
    data/ctx/s<source>/c<shard>.js       held-out contexts' token ids, shared by the SAEs of one corpus

Numbers are rounded to 4 significant digits (3 for per-token activations); cosines are stored in
thousandths and position profiles as integers 0..1000 of their maximum (``_quantized``).
Output is deterministic: the same data gives byte-identical files (sorted keys, no timestamps).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SHARD_SIZE = 256
CTX_SHARD = 32
STATIC_FILES = ("index.html", "app.js", "style.css")


def _compact(v: float):
    return int(v) if v.is_integer() and abs(v) < 1e15 else v


def _sig(values, sig: int = 4) -> list:
    """Floats rounded to ``sig`` significant digits (integral values as ints, NaN/inf -> None), as a list."""
    arr = np.asarray(values, dtype=np.float64).ravel().tolist()
    fmt = f"{{:.{sig}g}}"
    return [_compact(float(fmt.format(v))) if v == v and v not in (float("inf"), float("-inf")) else None for v in arr]


def _quantized(rows, levels: int = 1000) -> list[list]:
    """Per row [scale, q_0, q_1, ...] with value_i ~ q_i * scale / levels, q_i integers (a chart's resolution)."""
    v = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    top = np.abs(v).max(1) if v.shape[1] else np.zeros(len(v))
    q = np.rint(v / np.where(top > 0, top, 1)[:, None] * levels).astype(np.int64).tolist()
    return [[s] + r for s, r in zip(_sig(top), q)]


def _num(v, sig: int = 4):
    return _sig([v], sig)[0]


def _dump(key: str, payload: Any) -> str:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"window.__load({json.dumps(key)},{body});\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def slugs(names: list[str]) -> dict[str, str]:
    """A file-system and URL safe directory name per SAE, unique and deterministic."""
    out, seen = {}, set()
    for n in names:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", str(n)).strip(".") or "sae"
        s, i = base, 1
        while s.lower() in seen:
            i += 1
            s = f"{base}_{i}"
        seen.add(s.lower())
        out[n] = s
    return out


def static_text(name: str) -> str:
    """One of the app's static files (package data of ``treesae.browser``)."""
    return (resources.files("treesae.browser") / "static" / name).read_text(encoding="utf-8")


def _labels(stats: dict, tokens: np.ndarray, vocab: dict[int, str], n: int = 3) -> list[str]:
    """Per feature: the distinct tokens at the peaks of its top contexts (up to n), for search and the list."""
    ctx, pos, val = stats["top_ctx"], stats["top_pos"], stats["top_val"]
    out = []
    for f in range(len(ctx)):
        seen: list[str] = []
        for c, p, v in zip(ctx[f], pos[f], val[f]):
            if v <= 0:
                break
            s = vocab.get(int(tokens[c, p]), "")
            if s not in seen:
                seen.append(s)
                if len(seen) == n:
                    break
        out.append("\u2003".join(seen))  # an em space separates tokens (tokens may contain spaces)
    return out


def _feature_records(st: dict, logits: dict | None, matched: list[tuple[int, dict]]) -> list[dict]:
    """Every feature's page data (see the module docstring), built with whole-array rounding.

    x: top contexts [context, window start, peak position, max activation, [offset, activation, ...]]
    (non-zero window activations only); h: [first bin, counts...] of the non-zero histogram range;
    p: quantized position profile; lp / ln: [token id, logit, ...] promoted / suppressed;
    m: per other SAE [sae index, feature, cos*1000, feature, cos*1000, ...].
    """
    F, n = st["top_val"].shape
    val = st["top_val"]
    n_ctx = (val > 0).sum(1).tolist()
    vals = _sig(val)
    ctx, start, pos = st["top_ctx"].tolist(), st["top_start"].tolist(), st["top_pos"].tolist()
    win = st["top_win"]
    on = win > 0
    on[val <= 0] = False
    f_idx, j_idx, o_idx = np.nonzero(on)                       # C order: by feature, context, offset
    acts = _sig(win[on], 3)
    bounds = np.searchsorted(f_idx * n + j_idx, np.arange(F * n + 1))
    o_list = o_idx.tolist()
    hist = st["hist"]
    nzh = hist > 0
    any_h = nzh.any(1)
    first = np.where(any_h, nzh.argmax(1), 0)
    last = np.where(any_h, hist.shape[1] - 1 - nzh[:, ::-1].argmax(1), -1)
    prof = _quantized(st["pos_mean"])
    lg = None
    if logits is not None:
        k = logits["pos_ids"].shape[1]
        lg = {key: (logits[ids].tolist(), _sig(logits[vs])) for key, ids, vs in
              (("lp", "pos_ids", "pos_vals"), ("ln", "neg_ids", "neg_vals"))}
    mrows = [(o, m["idx"].tolist(), np.rint(m["cos"] * 1000).astype(np.int64).tolist()) for o, m in matched]
    out = []
    for f in range(F):
        contexts = []
        for j in range(n_ctx[f]):
            a, b = bounds[f * n + j], bounds[f * n + j + 1]
            pairs = [x for pair in zip(o_list[a:b], acts[a:b]) for x in pair]
            contexts.append([ctx[f][j], start[f][j], pos[f][j], vals[f * n + j], pairs])
        h = [int(first[f])] + hist[f, first[f]:last[f] + 1].tolist() if any_h[f] else []
        rec = {"i": f, "x": contexts, "h": h, "p": prof[f],
               "m": [[o] + [x for pair in zip(idx[f], cos[f]) for x in pair] for o, idx, cos in mrows]}
        if lg is not None:
            for key, (ids, vs) in lg.items():
                rec[key] = [x for pair in zip(ids[f], vs[f * k:(f + 1) * k]) for x in pair]
        out.append(rec)
    return out


def write_site(data: dict, out_dir: str | Path, shard_size: int = SHARD_SIZE, title: str = "TreeSAE feature browser") -> Path:
    """Write the static site for ``data`` (from ``extract``) into ``out_dir`` atomically (built in a
    sibling temp directory, then swapped in). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    for stale in [*out_dir.parent.glob(f".{out_dir.name}.tmp-*"), *out_dir.parent.glob(f".{out_dir.name}.old-*")]:
        # left by a killed run (its pid is gone)
        pid = stale.name.rsplit("-", 1)[-1]
        if stale == tmp or not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    try:
        _write_tree(data, tmp, shard_size, title)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_tree(data: dict, root: Path, shard_size: int, title: str) -> None:
    names = list(data["saes"])
    slug = slugs(names)
    index_of = {n: i for i, n in enumerate(names)}
    vocab = {int(k): v for k, v in data.get("vocab", {}).items()}
    sources = data.get("sources", [])
    for name in STATIC_FILES:
        text = static_text(name)
        if name == "index.html":
            text = text.replace("{{title}}", _html_escape(title))
        _write(root / name, text)
    _write(root / "data" / "vocab.js", _dump("vocab", {str(k): vocab[k] for k in sorted(vocab)}))
    for sid, src in enumerate(sources):
        toks, ids = np.asarray(src["tokens"]), np.asarray(src["ctx_ids"])
        for c0 in range(0, len(toks), CTX_SHARD):
            _write(root / "data" / "ctx" / f"s{sid}" / f"c{c0 // CTX_SHARD}.js",
                   _dump(f"ctx/{sid}/{c0 // CTX_SHARD}", {"start": c0, "tokens": toks[c0:c0 + CTX_SHARD].tolist(),
                                                          "ids": ids[c0:c0 + CTX_SHARD].tolist()}))
    entries = []
    matched = data.get("matches", {})
    for name in names:
        d = data["saes"][name]
        st, info, F = d["stats"], d["info"], d["info"]["d_sae"]
        n_shards = -(-F // shard_size)
        src_tokens = np.asarray(sources[info["source"]]["tokens"]) if sources else None
        others = [o for o in names if o in matched.get(name, {})]
        entries.append({
            "name": name, "slug": slug[name], "meta": info["meta"], "architecture": info["architecture"],
            "d_in": info["d_in"], "d_sae": F, "levels": info["levels"], "tree": info["tree"],
            "source": info["source"], "n_tokens": int(st["n_tokens"]), "n_contexts": int(st["n_contexts"]),
            "context_len": int(st["context_len"]), "first_counted": int(st["first_counted"]),
            "shard_size": shard_size, "n_shards": n_shards, "has_logits": d["logits"] is not None,
            "dead": _num(float((st["freq"] == 0).mean())), "matched_with": [index_of[o] for o in others]})
        level = np.zeros(F, dtype=np.int64)
        for li, (a, b) in enumerate(info["levels"]):
            level[a:b] = li
        cols = {"freq": _sig(st["freq"]), "mean": _sig(st["mean_act"]), "max": _sig(st["max_act"]),
                "pos0": _sig(st["pos0_frac"], 3), "peak": st["peak_pos"].tolist(), "peakx": _sig(st["peakiness"], 3),
                "act_tok": _labels(st, src_tokens, vocab) if src_tokens is not None else [""] * F}
        if len(info["levels"]) > 1:
            cols["level"] = level.tolist()
        if d["parent_of"] is not None:
            cols["parent"] = np.asarray(d["parent_of"]).tolist()
            for key, col in (("parent_given", "pgiven"), ("parent_cos", "pcos")):
                if key in st:
                    cols[col] = _sig(st[key], 3)
        if d["logits"] is not None:
            ids = d["logits"]["pos_ids"][:, :3]
            cols["logit_tok"] = ["\u2003".join(vocab.get(int(t), "") for t in row) for row in ids.tolist()]
        sdir = root / "data" / "saes" / slug[name]
        _write(sdir / "list.js", _dump(f"list/{name}", {"name": name, "n": F, "cols": cols}))
        records = _feature_records(st, d["logits"], [(index_of[o], matched[name][o]) for o in others])
        for s in range(n_shards):
            feats = records[s * shard_size:(s + 1) * shard_size]
            _write(sdir / f"f{s}.js", _dump(f"shard/{name}/{s}", {"start": s * shard_size, "features": feats}))
    settings = dict(data.get("settings", {}))
    settings["hist_edges"] = _sig(settings.get("hist_edges", []), 4)
    _write(root / "data" / "index.js", _dump("index", {
        "format": data.get("format", 1), "title": title, "saes": entries, "meta_columns": data.get("meta_columns", []),
        "settings": settings, "ctx_shard": CTX_SHARD,
        "sources": [{"corpus": s.get("corpus"), "n_contexts": int(len(s["tokens"])),
                     "context_len": int(np.asarray(s["tokens"]).shape[1])} for s in sources]}))


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
