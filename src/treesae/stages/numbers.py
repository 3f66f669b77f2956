"""The numbers stage: every number the paper quotes, and the verdicts, from the stages' tables.

    python -m treesae.stages.numbers

The only writer of ``paper/numbers.json`` (``numbers``: stable keys, floats to 6 significant digits),
``paper/headline.json`` (``HEADLINE``: what ``dvc metrics show`` prints), ``paper/runs.csv`` (stage 02's runs
table) and ``paper/training_curves.csv`` (every SAE's curve, for ``dvc plots``). Reads tables only (``TABLES``),
never the activations or the SAEs, and imports no torch: a number's definition is here, one hop from the
table it comes from.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import config, paths
from .. import verdicts as V
from ..analysis.factors import factor_effects
from ..registry import names
from ..runs import FACTORS, base_run, flag, frontier, frontier_seeds, pick, read_metrics, recipe_runs
from ..stats import mean_difference
from . import common

ANALYSES = ("position", "matching", "hierarchy", "saebench")
METRIC_COLS = ("nmse", "fvu", "explained_variance", "l0", "l0_p10", "l0_p50", "l0_p90", "dead_fraction",
               "ce_increase", "ce_increase_se", "ce_score", "kl_score")
TABLES = ("train.config", "position.corpora", "position.metrics", "matching.pairs", "matching.pair_features",
          "matching.metrics", "hierarchy.probe_scores", "hierarchy.metrics", "saebench.metrics", "synthetic.scores",
          "synthetic.metrics")


def load_tables(matching_factors=None) -> dict:
    """The runs table, the recipe runs' training curves, ``TABLES`` (``common.TABLES``' names) and params.yaml's
    train.architectures, as ``numbers`` takes them; ``matching_factors``: params.yaml's matching.factors (claim (b)
    compares these)."""
    m = read_metrics()
    t = {"metrics": m, "curves": common.recipe_curves(m), **common.load_tables(TABLES),
         "architectures": config.section("train")["architectures"]}  # params train.architectures (arch.* keys)
    if matching_factors is not None:
        t["matching.factors"] = list(matching_factors)
    return t


CURVES = ("tokens", "nmse", "l0", "dead_fraction")  # paper/training_curves.csv: dvc.yaml's top-level plots


def write_runs(tables: dict, out) -> None:
    """paper/runs.csv: stage 02's table (one row per SAE: factors, held-out metrics, convergence diagnostics and
    verdict), and paper/training_curves.csv: every SAE's training curve (``CURVES``) in one long table, published
    beside the paper so a clone shows every SAE's numbers without the data (and ``dvc plots show`` overlays them)."""
    m = tables["metrics"]
    common.write_table(m, out / "runs.csv", index=True)
    curves = [common.read_table(paths.data("train", "curves", f"{run}.csv"))[list(CURVES)].assign(run=run, architecture=r.architecture)
              for run, r in m.iterrows()]
    common.write_table(pd.concat(curves, ignore_index=True)[["run", "architecture", *CURVES]],
                       out / "training_curves.csv")


HEADLINE = ("base.fvu", "base.l0", "base.ce_increase", "base.dead_fraction", "train.converged_fraction",
            "matching.seed_shared_ratio", "synth.topk.f1", "synth.batchtopk.f1", "synth.matryoshka.f1", "synth.tree.f1",
            "synth.topk.explained_variance", "synth.tree.explained_variance", "synth.tree.absorption",
            "synth.tree.hierarchy_recovery")


def write_numbers(tables: dict, out, profile: str | None = None) -> dict:
    """paper/numbers.json (``numbers``) and paper/headline.json (its ``HEADLINE`` keys that this profile has: what
    ``dvc metrics show`` / ``diff`` print); returns numbers.json's content."""
    n = common.tidy(numbers(tables, profile))
    common.write_metrics(out / "numbers.json", n)
    common.write_metrics(out / "headline.json", {k: n[k] for k in HEADLINE if k in n})
    return n


def _put(out: dict, key: str, value):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return
    out[key] = value


def nmse_at_l0(l0, nmse, target: float) -> float:
    """nMSE at L0 = ``target`` on one architecture's frontier, interpolated linearly in log-log between
    its measured points; NaN outside their L0 range (no extrapolation)."""
    ok = (np.asarray(l0) > 0) & (np.asarray(nmse) > 0)
    x, y = np.log(np.asarray(l0, float)[ok]), np.log(np.asarray(nmse, float)[ok])
    if not len(x) or not x.min() <= np.log(target) <= x.max():
        return float("nan")
    o = np.argsort(x)
    return float(np.exp(np.interp(np.log(target), x[o], y[o])))


def numbers(tables: dict, profile: str | None = None) -> dict:
    """Every number the paper quotes, under stable keys (floats rounded to 6 significant digits when
    written by ``write_numbers``; NaN / missing values are left out). Sections are computed when their
    tables are present in ``tables`` (``load_tables``' names); only "metrics" is required.

    Set-up (stage 02's config.json, stage 03's corpora.csv):
      profile                                   params profile name (smoke / default)
      arch.{architecture}.{field}               train.architectures' scalar config fields (tables["architectures"])
      model, model.n_layers, model.d_model      the language model
      harvest.corpora, harvest.layers, harvest.layers_text ("3, 9, 15, 21"), harvest.context_len
      harvest.{corpus}.{n_tokens,n_contexts,n_train_tokens,n_heldout_tokens,n_documents}
      n_tokens_harvested                        sum of n_tokens over corpora
      train.tokens_per_sae, train.batch_size, train.lr, train.lr_end, train.dead_window_tokens
    Runs (data/train/metrics.csv; metric M in nmse, fvu, explained_variance, l0, l0_p10, l0_p50, l0_p90,
    dead_fraction, ce_increase, ce_increase_se (standard error over contexts), ce_score, kl_score):
      n_saes, n_architectures
      train.n_converged, train.converged_fraction, train.not_converged (run names; convergence.THRESHOLDS),
      train.{dec_stability,fvu_gain_last_quarter,init_frac_above,fvu_gap}_median   over all SAEs
      eval.heldout_tokens, eval.dead_window_tokens, eval.downstream_predictions, eval.downstream_contexts,
      eval.ce_clean, eval.ce_zero
      base.{run,architecture,corpus,layer,d_sae,k,seed}, base.{M}
      run.{run name}.{M}                        every SAE
      frontier.architectures, frontier.ks, frontier.{arch}.k{k}.{M}
      frontier.{arch}.k{k}.nmse_vs_topk, .ce_increase_vs_topk   ratios to TopK at the same k
      frontier.best_nmse.k{k}, frontier.best_ce.k{k}             architecture with the lowest value
      treesae.best_variant, treesae.best_variant_ce              lowest mean nMSE / CE increase over k
      treesae.best_variant_nmse_vs_topk                          its mean nMSE ratio to TopK
      frontier.{arch}.l0_{k}.nmse, .nmse_vs_topk   nMSE at L0 = k (``nmse_at_l0``), its ratio to TopK at k
      frontier.best_nmse.l0_{k}                  architecture with the lowest nMSE at L0 = k
      treesae.best_variant_at_l0, treesae.best_variant_at_l0_nmse_vs_topk   the same comparison at matched L0
      seeds.{arch}.k{k}.{fvu,ce_increase}.{mean,sd,vs_topk[.lo,.hi]}, .n, .n_converged   over the frontier's seeds
      levels.{arch}.k{k}.level{i}.{l0,dead_fraction,nmse_cumulative}   multi-level frontier SAEs
      dead.{arch}.{variant}                     held-out dead fraction of the base architecture's recipe
                                                runs: default, no_aux_k, no_tied_init, no_geometric_median_init
      dead_training.{arch}.{variant}.{final,max}   dead fraction over training (curves)
      recipe.{variant}.{M}                      the same recipe runs, every metric
      seed.s{s}.{M}, corpus.{corpus}.{M}, size.d{d_sae}.{M}, layer.L{layer}.{M}   the other grids (+ base)
      seed.nmse_std                             std of nMSE over seeds
    Analyses: every key of the stage metrics files, prefixed position., matching., hierarchy., saebench., synth.
    (see stages.position.summarize, stages.matching.summarize, stages.hierarchy.summarize,
    stages.saebench.summarize, stages.synthetic.summarize).
    Verdicts (``claims``, ``verdicts``): verdict.{claim} (supported / contradicted / no detectable difference /
    not testable here) and verdict.{claim}.{basis, part.estimate, part.lo, part.hi, ...}.
    """
    out: dict = {}
    m = tables["metrics"]
    b = base_run(m)
    _setup_numbers(out, tables, profile)
    cols = [c for c in METRIC_COLS if c in m]
    _run_numbers(out, m, b, cols)
    _frontier_numbers(out, m, cols)
    _recipe_numbers(out, m, tables.get("curves"), cols)
    _grid_numbers(out, m, b, cols)

    for a in ANALYSES:
        for k, v in (tables.get(f"{a}.metrics") or {}).items():
            out[f"{a}.{k}"] = v
    for k, v in (tables.get("synthetic.metrics") or {}).items():
        out[f"synth.{k}"] = v
    out.update(V.flatten(claims(tables)))
    return out


def _setup_numbers(out: dict, tables: dict, profile: str | None) -> None:
    """profile, model.*, harvest.*, train.* (``numbers``' docstring)."""
    _put(out, "profile", profile)
    for a, extra in (tables.get("architectures") or {}).items():  # train.architectures: e.g. the tree's design
        out.update({f"arch.{a}.{k}": v for k, v in extra.items() if isinstance(v, (int, float, str, bool))})
    if "position.corpora" in tables:
        c = tables["position.corpora"]
        out["model"] = str(c.model.iloc[0])
        out["model.n_layers"], out["model.d_model"] = int(c.n_layers.iloc[0]), int(c.d_model.iloc[0])
        layers = [int(x) for x in str(c.layers.iloc[0]).split(",")]
        out["harvest.layers"], out["harvest.layers_text"] = layers, ", ".join(map(str, layers))
        out["harvest.corpora"], out["harvest.context_len"] = list(c.corpus), int(c.context_len.iloc[0])
        for _, r in c.iterrows():
            for k in ("n_tokens", "n_contexts", "n_train_tokens", "n_heldout_tokens", "n_documents"):
                out[f"harvest.{r.corpus}.{k}"] = int(r[k])
        out["n_tokens_harvested"] = int(c.n_tokens.sum())
    optim = (tables.get("train.config") or {}).get("optim") or {}  # the training config stage 02 used
    if optim:
        out.update({"train.batch_size": optim["batch_size"], "train.lr": optim["lr"], "train.lr_end": optim["lr_end"],
                    "train.dead_window_tokens": optim["dead_after_tokens"]})
    if "curves" in tables and len(tables["curves"]):
        out["train.tokens_per_sae"] = int(tables["curves"].tokens.max())
    elif optim:
        out["train.tokens_per_sae"] = int(optim["n_tokens"])


def _run_numbers(out: dict, m: pd.DataFrame, b: pd.Series, cols: list) -> None:
    """n_saes, train.n_converged and the convergence medians, eval.*, base.*, run.*."""
    out["n_saes"], out["n_architectures"] = len(m), int(m.architecture.nunique())
    if "converged" in m:  # convergence.THRESHOLDS; an SAE without diagnostics counts as not converged
        ok = flag(m.converged)
        out["train.n_converged"], out["train.converged_fraction"] = int(ok.sum()), float(ok.mean())
        out["train.not_converged"] = list(m.index[~ok])
        for c in ("dec_stability", "fvu_gain_last_quarter", "init_frac_above", "fvu_gap"):
            if c in m and m[c].notna().any():
                _put(out, f"train.{c}_median", float(m[c].median()))
    for k, col in (("eval.heldout_tokens", "n_tokens"), ("eval.dead_window_tokens", "dead_window_tokens"),
                   ("eval.downstream_predictions", "n_predictions"), ("eval.downstream_contexts", "n_contexts"),
                   ("eval.ce_clean", "ce_clean"),
                   ("eval.ce_zero", "ce_zero")):
        if col in m:
            _put(out, k, b[col].item() if hasattr(b[col], "item") else b[col])
    out["base.run"] = b.name
    for k in ("architecture", "corpus", "layer", "d_sae", "k", "seed"):
        out[f"base.{k}"] = b[k].item() if hasattr(b[k], "item") else b[k]
    for c in cols:
        _put(out, f"base.{c}", float(b[c]))
    for name, r in m.iterrows():
        for c in cols:
            _put(out, f"run.{name}.{c}", float(r[c]))


def _seed_numbers(out: dict, m: pd.DataFrame) -> None:
    """seeds.{arch}.k{k}.{fvu,ce_increase}.{mean,sd} over every seed of a frontier configuration, .n,
    .n_converged (when the runs table has the convergence verdict), and .vs_topk (+ .lo, .hi): the mean difference from TopK's seeds +- 2 SE (``stats``)."""
    fs = frontier_seeds(m)
    for (a, k), g in fs.groupby(["architecture", "k"]):
        p = f"seeds.{a}.k{int(k)}."
        out[p + "n"] = len(g)
        if "converged" in g:
            out[p + "n_converged"] = int(flag(g.converged).sum())
        top = fs[(fs.architecture == "topk") & (fs.k == k)]
        for c in ("fvu", "ce_increase"):
            if c not in g:
                continue
            _put(out, p + f"{c}.mean", float(g[c].mean()))
            _put(out, p + f"{c}.sd", float(g[c].std(ddof=1)) if len(g) > 1 else float("nan"))
            if a != "topk" and len(top) > 1:
                d, lo, hi = mean_difference(g[c], top[c])
                for suffix, v in (("", d), (".lo", lo), (".hi", hi)):
                    _put(out, p + f"{c}.vs_topk{suffix}", v)


def _frontier_numbers(out: dict, m: pd.DataFrame, cols: list) -> None:
    """frontier.*, levels.*, treesae.* (at matched k and at matched L0)."""
    f = frontier(m)
    archs = [a for a in names() if a in set(f.architecture)]
    archs += sorted(set(f.architecture) - set(archs))
    ks = sorted(int(k) for k in f.k.unique())
    out["frontier.architectures"], out["frontier.ks"] = archs, ks
    fi = f.set_index(["architecture", "k"])
    for (a, k), r in fi.iterrows():
        for c in cols:
            _put(out, f"frontier.{a}.k{int(k)}.{c}", float(r[c]))
        if ("topk", k) in fi.index:
            t = fi.loc[("topk", k)]
            for c in ("nmse", "ce_increase"):
                if c in fi and t[c] != 0:
                    _put(out, f"frontier.{a}.k{int(k)}.{c}_vs_topk", float(r[c] / t[c]))
        for i in range(8):
            for c in ("l0", "dead_fraction", "nmse_cumulative"):
                col = f"{c}_level{i}"
                if col in r and pd.notna(r[col]):
                    out[f"levels.{a}.k{int(k)}.level{i}.{c}"] = float(r[col])
    _seed_numbers(out, m)
    for k in ks:
        g = f[f.k == k]
        out[f"frontier.best_nmse.k{k}"] = g.architecture.iloc[int(np.argmin(g.nmse.to_numpy()))]
        if "ce_increase" in g and g.ce_increase.notna().any():
            out[f"frontier.best_ce.k{k}"] = g.architecture.iloc[int(np.nanargmin(g.ce_increase.to_numpy()))]
    # at matched L0 (measured L0 often misses the target k): at[k][arch] = nMSE at L0 = k, where defined
    topk = f[f.architecture == "topk"].set_index("k").nmse
    at = {k: {a: v for a in archs if np.isfinite(v := nmse_at_l0(f.l0[f.architecture == a], f.nmse[f.architecture == a], k))}
          for k in ks}
    vs_topk = {k: {a: v / topk[k] for a, v in at[k].items()} for k in ks if k in topk.index}
    for k in ks:
        for a, v in at[k].items():
            out[f"frontier.{a}.l0_{k}.nmse"] = v
            _put(out, f"frontier.{a}.l0_{k}.nmse_vs_topk", vs_topk.get(k, {}).get(a))
        if at[k]:
            out[f"frontier.best_nmse.l0_{k}"] = min(at[k], key=at[k].get)
    tree = f[f.architecture.isin(names(hierarchical=True))]
    if len(tree):
        mean_nmse = tree.groupby("architecture").nmse.mean()
        out["treesae.best_variant"] = mean_nmse.idxmin()
        if "ce_increase" in tree and tree.ce_increase.notna().any():
            out["treesae.best_variant_ce"] = tree.groupby("architecture").ce_increase.mean().idxmin()
        top = f[f.architecture == "topk"].set_index("k").nmse
        best = tree[tree.architecture == mean_nmse.idxmin()].set_index("k").nmse
        common_k = best.index.intersection(top.index)
        if len(common_k):
            _put(out, "treesae.best_variant_nmse_vs_topk", float((best[common_k] / top[common_k]).mean()))
        ratios = {a: [r[a] for r in vs_topk.values() if a in r] for a in sorted(set(tree.architecture))}
        at_l0 = {a: float(np.mean(r)) for a, r in ratios.items() if r}
        if at_l0:
            best_l0 = min(at_l0, key=at_l0.get)
            out["treesae.best_variant_at_l0"] = best_l0
            _put(out, "treesae.best_variant_at_l0_nmse_vs_topk", at_l0[best_l0])


def _recipe_numbers(out: dict, m: pd.DataFrame, curves: pd.DataFrame | None, cols: list) -> None:
    """dead.*, recipe.*, dead_training.*: the recipe ablations."""
    rec = recipe_runs(m)
    for name, r in rec.iterrows():
        _put(out, f"dead.{r.architecture}.{r.variant}", float(r.dead_fraction))
        for c in cols:
            _put(out, f"recipe.{r.variant}.{c}", float(r[c]))
    if curves is not None:
        for (a, v), g in curves.groupby(["architecture", "variant"], sort=False):
            g = g.sort_values("tokens")
            _put(out, f"dead_training.{a}.{v}.final", float(g.dead_fraction.iloc[-1]))
            _put(out, f"dead_training.{a}.{v}.max", float(g.dead_fraction.max()))


def _grid_numbers(out: dict, m: pd.DataFrame, b: pd.Series, cols: list) -> None:
    """seed.*, corpus.*, size.*, layer.*: each grid's runs with the base."""
    def grid(name, field, fmt):
        rows = pd.concat([m.loc[[b.name]], pick(m, [name])])
        rows = rows[~rows.index.duplicated()]
        for _, r in rows.iterrows():
            for c in cols:
                _put(out, f"{name}.{fmt(r[field])}.{c}", float(r[c]))
        return rows
    if pick(m, ["seed"]).shape[0]:
        s = grid("seed", "seed", lambda v: f"s{int(v)}")
        if len(s) > 1:
            out["seed.nmse_std"] = float(s.nmse.std(ddof=0))
    if pick(m, ["corpus"]).shape[0]:
        grid("corpus", "corpus", str)
    if pick(m, ["size"]).shape[0]:
        grid("size", "d_sae", lambda v: f"d{int(v)}")
    if pick(m, ["layer"]).shape[0]:
        grid("layer", "layer", lambda v: f"L{int(v)}")


def claims(tables: dict) -> dict[str, dict]:
    """The claims of ``verdicts.CLAIMS``, each with its verdict, estimates and intervals, from
    converged SAEs only (``metrics.converged``): a comparison that involves an SAE that is not converged
    does not count, so with none converged every claim is "not testable here"."""
    m, t = tables["metrics"], tables
    b = base_run(m)
    ok = flag(m.converged) if "converged" in m else pd.Series(False, index=m.index)
    c = m[ok]
    why = f"{int(ok.sum())} of {len(m)} SAEs converged"
    same = c[(c.corpus == b.corpus) & (c.layer == b.layer) & (c.d_sae == b.d_sae)]
    out = {"treesae_ranking": V.treesae_ranking(same, int(b.k), names(hierarchical=True)),
           "aux_k_tied_init_reduce_dead": V.aux_k_tied_init_reduce_dead(c, b)}
    mm = t.get("matching.metrics") or {}
    thr = mm.get("threshold", 0.7)
    if "matching.pairs" in t:
        p = t["matching.pairs"]
        p = p[p.a.isin(c.index) & p.b.isin(c.index)]
        col = f"dec_shared_{round(thr * 100)}"
        eff, boot = factor_effects(p, c, factors=tuple(f for f in t.get("matching.factors", FACTORS) if f in c.columns),
                                   column=col if col in p else "dec_shared")
        out["corpus_matters_most"] = V.corpus_matters_most(eff, boot, thr)
    else:
        out["corpus_matters_most"] = {"verdict": V.NOT_TESTABLE, "basis": "no matching analysis"}
    pf = t.get("matching.pair_features")
    out["encoder_decoder_disagree"] = (
        V.encoder_decoder_disagree(pf, thr) if pf is not None and len(pf) and pf.a.iloc[0] in c.index and pf.b.iloc[0] in c.index
        else {"verdict": V.NOT_TESTABLE, "basis": "the representative pair is not converged or not matched"})
    pm = t.get("position.metrics") or {}
    frac, n_lat = {}, {}
    for L in pm.get("layers", []):
        run = pm.get(f"sae_layer{L}")
        if run in c.index and f"layer{L}.frac_position_features" in pm:
            frac[int(L)], n_lat[int(L)] = float(pm[f"layer{L}.frac_position_features"]), int(c.at[run, "d_sae"])
    out["position_early_layers"] = V.position_early_layers(frac, n_lat)
    pr = t.get("hierarchy.probe_scores")
    out["treesae_hierarchy_lm"] = V.treesae_hierarchy(pr[(pr["mode"] == "mcs") & pr.run.isin(c.index)] if pr is not None
                                                      else pd.DataFrame(columns=["architecture", "score"]),
                                                      names(hierarchical=True))
    for d in out.values():
        d["basis"] = f"{d.get('basis', '')}; {why}".lstrip("; ")
    s = t.get("synthetic.scores")
    if s is not None and len(s):  # every synthetic SAE trains to the plateau measured in docs/LOG.md
        k = int(t["synthetic.metrics"]["k"])
        s = s[s.source == "ours"].assign(fvu=lambda d: 1 - d.explained_variance, k=k)
        out["treesae_ranking_ground_truth"] = V.treesae_ranking(s, k, names(hierarchical=True))
    else:
        out["treesae_ranking_ground_truth"] = {"verdict": V.NOT_TESTABLE, "basis": "stage 08 not run"}
    return out


def main() -> dict:
    """Read the tables, write the four files; returns numbers.json as written."""
    profile, matching = config.section("profile"), config.section("matching")
    tables = load_tables(matching.get("factors"))
    out = paths.root() / "paper"
    write_runs(tables, out)
    return write_numbers(tables, out, profile)


if __name__ == "__main__":
    n = main()
    print(f"paper/numbers.json: {len(n)} numbers; verdicts: "
          + ", ".join(f"{k[8:]} {v}" for k, v in sorted(n.items()) if k.startswith("verdict.") and k.count(".") == 1))
