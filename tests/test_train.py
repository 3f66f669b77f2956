"""Trainer: determinism, bit-identical resume, validation before any step, data dtypes, lr schedule."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from treesae.train import TrainConfig, get_lr, train_sweep


class TinyTopK(nn.Module):
    """Minimal SAE with the BaseSAE interface (so the trainer tests do not depend on treesae.saes)."""

    def __init__(self, d_in=16, d_sae=64, k=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d_sae, d_in, generator=g)
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec, self.W_enc = nn.Parameter(W), nn.Parameter(W.T.clone())
        self.b_enc, self.b_dec = nn.Parameter(torch.zeros(d_sae)), nn.Parameter(torch.zeros(d_in))
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=d_sae, k=k)
        self.levels, self.parent_of = [slice(0, d_sae)], None

    def encode(self, x):
        v, i = ((x - self.b_dec) @ self.W_enc + self.b_enc).topk(self.cfg.k, dim=-1)
        return torch.zeros(x.shape[0], self.cfg.d_sae).scatter(1, i, v.relu())

    def decode(self, z):
        return z @ self.W_dec + self.b_dec

    def forward(self, x):
        return self.decode(self.encode(x))

    def training_loss(self, x, dead_mask):
        z = self.encode(x)
        loss = (self.decode(z) - x).pow(2).sum(-1).mean()
        return loss, {"n_dead": dead_mask.sum().float()}, z

    def before_optimizer_step(self):
        pass

    @torch.no_grad()
    def after_optimizer_step(self):
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def init_from_sample(self, x):
        self.b_dec.copy_(x.mean(0))


def _data(n=3000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 8, generator=g) @ torch.randn(8, d, generator=g) + 0.1 * torch.randn(n, d, generator=g))


CFG = dict(n_tokens=20_000, batch_size=256, lr=3e-3, lr_warm_up_steps=5, log_every=10, checkpoint_every=0,
           dead_after_tokens=2_000)


def _sweep(real=False):
    saes = {"a": TinyTopK(seed=1), "b": TinyTopK(d_sae=32, k=2, seed=2)}
    if real:  # stateful extras: BatchTopK's threshold buffer, the tree's gating, AuxK once latents die
        from treesae.saes import build
        saes |= {"batchtopk": build("batchtopk", d_in=16, d_sae=64, k=4),
                 "tree": build("tree", d_in=16, widths=[8, 16], k=2)}
    return saes


def _same(s1, s2):
    return all(torch.equal(s1[n].state_dict()[k], s2[n].state_dict()[k]) for n in s1 for k in s1[n].state_dict())


def test_deterministic_and_curves(tmp_path):
    data = _data()
    s1, s2 = _sweep(), _sweep()
    c1 = train_sweep(s1, data, TrainConfig(**CFG), out_dir=tmp_path, progress=False)
    c2 = train_sweep(s2, data, TrainConfig(**CFG), progress=False)
    assert _same(s1, s2)
    for n in s1:
        pd.testing.assert_frame_equal(c1[n], c2[n])
        assert {"step", "tokens", "loss", "mse", "nmse", "l0", "dead_fraction", "n_dead"} <= set(c1[n].columns)
        assert (tmp_path / "curves" / f"{n}.csv").exists()
    assert c1["a"].tokens.iloc[-1] == (20_000 // 256) * 256 and c1["a"].step.iloc[-1] == 20_000 // 256
    assert c1["a"].nmse.iloc[-1] < 0.5 * c1["a"].nmse.iloc[0]
    assert c1["a"].l0.iloc[-1] == pytest.approx(4) and c1["b"].l0.iloc[-1] == pytest.approx(2)
    # a different seed gives a different order, hence different weights
    s3 = _sweep()
    train_sweep(s3, data, TrainConfig(**{**CFG, "seed": 1}), progress=False)
    assert not _same(s1, s3)


def test_resume_is_bit_identical(tmp_path):
    data, cfg = _data(), TrainConfig(**{**CFG, "checkpoint_every": 256 * 20})
    ref = _sweep(real=True)
    c_ref = train_sweep(ref, data, cfg, out_dir=tmp_path / "ref", progress=False)
    assert c_ref["batchtopk"].aux.max() > 0  # some latents died: AuxK (and the dead mask) is part of the state

    def crash(step, tokens, saes):
        if step == 47:  # last checkpoint at step 40: steps 41..47 are lost and redone
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train_sweep(_sweep(real=True), data, cfg, out_dir=tmp_path / "run", progress=False, callback=crash)
    steps = []
    resumed = _sweep(real=True)
    c_res = train_sweep(resumed, data, cfg, out_dir=tmp_path / "run", progress=False,
                        callback=lambda s, t, m: steps.append(s))
    assert steps[0] == 41
    assert _same(ref, resumed)
    for n in ref:
        pd.testing.assert_frame_equal(c_ref[n], c_res[n])
    # a finished run resumes at its end (no step); another config ignores the checkpoint
    steps.clear()
    train_sweep(_sweep(real=True), data, cfg, out_dir=tmp_path / "run", progress=False, callback=lambda s, t, m: steps.append(s))
    assert steps == []
    with pytest.warns(UserWarning, match="another config"):
        train_sweep(_sweep(real=True), data, TrainConfig(**{**CFG, "lr": 1e-3, "n_tokens": 2560}), out_dir=tmp_path / "run",
                    progress=False)


def test_numpy_float16_memmap_matches_tensor(tmp_path):
    data16 = _data().to(torch.float16)
    mm = np.lib.format.open_memmap(tmp_path / "acts.npy", mode="w+", dtype=np.float16, shape=tuple(data16.shape))
    mm[:] = data16.numpy()
    mm.flush()
    cfg = TrainConfig(**{**CFG, "n_tokens": 5_000})
    s1, s2 = _sweep(), _sweep()
    train_sweep(s1, np.load(tmp_path / "acts.npy", mmap_mode="r"), cfg, progress=False)
    train_sweep(s2, data16.float(), cfg, progress=False)
    assert _same(s1, s2)


def _never(*a):
    raise AssertionError("a training step ran before validation failed")


def test_validation_before_any_step():
    data = _data()
    bad = data.clone()
    bad[[5, 700], 3] = float("nan")
    bad[900, 0] = float("inf")
    saes = _sweep()
    before = {k: v.clone() for k, v in saes["a"].state_dict().items()}
    with pytest.raises(ValueError, match=r"3 of 3000 rows with NaN/Inf.*first: row 5.*[Rr]e-harvest"):
        train_sweep(saes, bad, TrainConfig(**CFG), progress=False, callback=_never)
    assert all(torch.equal(before[k], v) for k, v in saes["a"].state_dict().items())
    with pytest.raises(ValueError, match=r"SAE 'b' has d_in=24 but the data has width 16"):
        train_sweep({"a": TinyTopK(), "b": TinyTopK(d_in=24)}, data, TrainConfig(**CFG), progress=False, callback=_never)
    wide = TinyTopK(d_sae=32)
    wide.cfg.k = 40  # configs validate k <= d_sae; the trainer re-checks (cfg mutated after construction)
    with pytest.raises(ValueError, match=r"SAE 'wide': k=40 > d_sae=32"):
        train_sweep({"ok": TinyTopK(), "wide": wide}, data, TrainConfig(**CFG), progress=False, callback=_never)


def test_config_validation_and_lr_schedule():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="n_tokens"):
        TrainConfig(n_tokens=100, batch_size=4096)
    with pytest.raises(ValueError, match="lr_end"):
        TrainConfig(lr=1e-3, lr_end=1e-2)
    assert TrainConfig(n_tokens=1_000_000_000).dead_after_tokens == 10_000_000
    assert TrainConfig(n_tokens=2_000_000).dead_after_tokens == 200_000
    for sched in ("linear", "cosine"):
        cfg = TrainConfig(n_tokens=100 * 10, batch_size=10, lr=1.0, lr_end=0.1, lr_schedule=sched,
                          lr_warm_up_steps=10, lr_decay_frac=0.5)
        lrs = [get_lr(s, cfg) for s in range(cfg.n_steps)]
        assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[49] == 1.0
        assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert get_lr(99, TrainConfig(n_tokens=1000, batch_size=10, lr_schedule="constant")) == 3e-4


# ----------------------------------------------------------------------------- real architectures

def test_every_architecture_trains_in_one_sweep(tmp_path):
    from treesae.saes import build, names
    saes = {a: build(a, d_in=16, d_sae=56, k=4, **({"l1_coef": 0.05} if a == "relu" else {})) for a in names()}
    curves = train_sweep(saes, _data(), TrainConfig(**{**CFG, "n_tokens": 15_000}), out_dir=tmp_path, progress=False)
    for a, df in curves.items():
        assert df.nmse.iloc[-1] < df.nmse.iloc[0], a
        assert np.isfinite(df.select_dtypes("number").to_numpy()).all(), a
        n_levels = len(saes[a].levels)
        for i in range(n_levels if n_levels > 1 else 0):
            assert {f"l0_level{i}", f"dead_fraction_level{i}"} <= set(df.columns), a
        assert not saes[a].training  # handed back in eval mode
    assert curves["topk"].l0.iloc[-1] == pytest.approx(4)
    assert curves["batchtopk"].l0.mean() == pytest.approx(4)  # k per token on average over the batch


def test_real_k_above_d_sae_is_refused():
    from treesae.saes import build
    sae = build("topk", d_in=16, d_sae=32, k=4)
    sae.cfg.k = 33
    with pytest.raises(ValueError, match=r"SAE 'topk32': k=33 > d_sae=32"):
        train_sweep({"topk32": sae}, _data(), TrainConfig(**CFG), progress=False, callback=_never)


def _planted(n, d=32, n_feat=96, p_on=4 / 96, seed=0):
    """Tokens = sparse non-negative mixtures of n_feat unit directions + offset + noise."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_feat, d, generator=torch.Generator().manual_seed(123))
    D /= D.norm(dim=1, keepdim=True)
    on = torch.rand(n, n_feat, generator=g) < p_on
    return (on * (0.5 + 2 * torch.rand(n, n_feat, generator=g))) @ D + 0.5 + 0.02 * torch.randn(n, d, generator=g)


def test_topk_nmse_matches_sae_lens():
    """Our TopK vs sae-lens' TopKTrainingSAE + SAETrainer on the same batches (same order), same
    k / d_sae / lr / batch / tokens / AuxK coefficient / dead window; held-out nMSE must agree within
    [0.7, 1.2] x sae-lens'. Why that band: the two differ only in init and AuxK normalisation (sae-lens:
    decoder rows at norm 0.1, b_dec = 0, TopK on pre-activations times decoder norms, k_aux = d_in / 2;
    ours: unit-norm tied init, geometric-median b_dec, k_aux = 256 clamped to d_sae / 2) and in loss
    scale (sum of squares vs nMSE, which Adam nearly ignores). Measured at this size: the seed alone
    moves either trainer's nMSE by ~8%, and ours lands 8-20% lower (the b_dec init helps on data with
    a mean); more than 20% worse would be a trainer bug, more than 30% better a metric mismatch."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from treesae.saes import build
    from treesae.train import ShuffledOrder
    x, held = _planted(60_000), _planted(8192, seed=1)
    k, d_sae, B, lr, n_tok = 8, 128, 256, 1e-3, 600_000
    cfg = TrainConfig(n_tokens=n_tok, batch_size=B, lr=lr, lr_end=0.0, lr_decay_frac=0.2, log_every=500,
                      checkpoint_every=0)
    ours = build("topk", d_in=32, d_sae=d_sae, k=k)
    train_sweep({"ours": ours}, x, cfg, progress=False)
    with torch.no_grad():
        nmse_ours = float((ours(held) - held).pow(2).sum() / held.pow(2).sum())
    torch.manual_seed(0)
    theirs = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=d_sae, k=k, aux_loss_coefficient=1 / 32))
    order = ShuffledOrder(x.shape[0], cfg.seed)
    batches = (x[order.indices(s * B, B)] for s in range(cfg.n_steps))
    SAETrainer(cfg=SAETrainerConfig(total_training_samples=cfg.n_steps * B, train_batch_size_samples=B, lr=lr,
                                    lr_end=0.0, lr_decay_steps=int(0.2 * cfg.n_steps),
                                    dead_feature_window=cfg.dead_after_tokens // B, device="cpu"),
               sae=theirs, data_provider=batches).fit()
    theirs.eval()
    with torch.no_grad():
        nmse_theirs = float((theirs.decode(theirs.encode(held)) - held).pow(2).sum() / held.pow(2).sum())
    print(f"held-out nMSE: ours {nmse_ours:.4f}, sae-lens {nmse_theirs:.4f}")
    assert nmse_theirs < 0.15  # sae-lens itself learned the data (variance of x is ~1/3 of its energy)
    assert 0.7 <= nmse_ours / nmse_theirs <= 1.2, (nmse_ours, nmse_theirs)


# ----------------------------------------------------------------------------- planted dictionaries

def _planted_dictionary(*args, **kw):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "saes"))
    from synthetic import planted_dictionary
    return planted_dictionary(*args, **kw)


def _unit(W):
    W = W.detach()
    return W / W.norm(dim=1, keepdim=True)


PLANTED_CFG = dict(batch_size=256, lr=3e-3, log_every=100, checkpoint_every=0)


def test_topk_recovers_planted_directions():
    """Mean over the 64 planted directions of their max cosine with a learned decoder row > 0.9.

    Why 0.9: the data are noise-free exact-4-sparse mixtures, so a recovered direction scores > 0.99
    (measured: 0.991-0.995 over seeds), while a random dictionary scores ~0.44 (checked below). 0.9 fails
    a trainer that systematically mislearns, and still tolerates ~10% of the features being missed
    (dead or duplicated latents). The SAE's seed differs from the data's: planted_dictionary and
    SAE init draw from identically seeded generators, and equal seeds would start at the answer."""
    from treesae.saes import build
    X, dirs, _ = _planted_dictionary(d_in=32, n_features=64, k=4, n_samples=30_000, seed=0)
    sae = build("topk", d_in=32, d_sae=128, k=4, seed=100)
    assert (dirs @ _unit(sae.W_dec).T).max(1).values.mean() < 0.6
    train_sweep({"topk": sae}, X, TrainConfig(n_tokens=150_000, **PLANTED_CFG), progress=False)
    assert (dirs @ _unit(sae.W_dec).T).max(1).values.mean() > 0.9


@torch.no_grad()
def coactivation_parent(sae, X):
    """Inferred parent of every latent of a flat SAE: the other latent most often active when it is,
    argmax_i P(i active | j active) on X (the strongest co-activation-based assignment)."""
    z = (sae.encode(X) > 0).float()
    co = z.T @ z
    cond = co / co.diag().clamp_min(1)[:, None]  # [j, i] = P(i active | j active)
    cond.fill_diagonal_(-1)
    return cond.argmax(1)


def hierarchy_score(sae, dirs, true_parent_of, X, parent=None) -> float:
    """Fraction of planted (parent p, child c) pairs recovered: take the latent whose decoder row best
    matches c; its parent in the SAE (``parent``, default ``sae.parent_of`` when the SAE has a structure,
    else ``coactivation_parent``) must match p best among all planted directions."""
    cos = dirs @ _unit(sae.W_dec).T  # [planted, latent]
    if parent is None:
        parent = sae.parent_of if sae.parent_of is not None else coactivation_parent(sae, X)
    children = (true_parent_of >= 0).nonzero().squeeze(1)
    ok = [int(parent[cos[c].argmax()]) >= 0 and int(cos[:, parent[cos[c].argmax()]].argmax()) == int(true_parent_of[c])
          for c in children]
    return sum(ok) / len(ok)


def test_tree_recovers_planted_hierarchy_better_than_topk():
    """8 parents x 4 children (40 planted features); each token: 2 parents + one child of each (L0 = 4).
    Tree SAE (widths 8 -> 32, branching 4, parent_of structural) vs flat TopK (40 latents, hierarchy
    inferred by co-activation), same dictionary size and L0, in two regimes: L0 = the true 4 (ks 2+2 vs
    k 4) and L0 = 3 below it, where flat SAEs absorb parents into children (ks 2+1 vs k 3); 150k tokens.
    Measured for data seeds 0-3: tree 0.47-0.88, TopK 0.09-0.50 per run, and the tree's mean over the
    two regimes beat TopK's by 0.23-0.44 for every seed; here (seed 0) the tree's mean must reach 0.5
    and beat TopK's by 0.2. The tree's dictionary is also scored with TopK's co-activation rule instead
    of its parent_of and must win by the same margin: the comparison is not won by the scoring rule.
    This is the original, fixed-partition tree (its blocks of 4 match the planted shape exactly); the learned
    default is measured on stage 08's world (tests/test_synthetic_world.py, docs/LOG.md)."""
    from treesae.saes import build
    P, C = 8, 4
    kw = dict(d_in=32, n_features=P * (1 + C), k=4, hierarchy=(P, C))
    scores = {"tree": [], "topk": [], "tree_coact": []}
    for seed in (0,):
        X, dirs, pof = _planted_dictionary(n_samples=34_096, seed=seed, **kw)
        held, X = X[-4096:], X[:-4096]
        saes = {}
        for k, ks in ((4, [2, 2]), (3, [2, 1])):
            saes[f"topk{k}"] = build("topk", d_in=32, d_sae=40, k=k, seed=100 + seed)
            saes[f"tree{k}"] = build("tree", d_in=32, widths=[P, P * C], branching=C, ks=ks, seed=100 + seed,
                                     parent_rule="fixed", budget="level")
        train_sweep(saes, X, TrainConfig(n_tokens=150_000, seed=seed, **PLANTED_CFG), progress=False)
        for name, sae in saes.items():
            scores[name[:4]].append(hierarchy_score(sae, dirs, pof, held))
            if name.startswith("tree"):
                scores["tree_coact"].append(hierarchy_score(sae, dirs, pof, held, coactivation_parent(sae, held)))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    print("hierarchy scores:", scores, "means:", mean)
    assert mean["tree"] >= 0.5 and mean["tree"] >= mean["topk"] + 0.2, scores
    assert mean["tree_coact"] >= mean["topk"] + 0.2, scores


def test_a_wide_dictionary_at_a_high_lr_loses_latents_and_aux_k_revives_them():
    """Positive control for AuxK (profiles/deadlatents.yaml at toy scale): 512 latents, k 2, lr 1e-2 on 1,024
    planted features. Without AuxK or tied init over half the latents never fire on held-out data; AuxK keeps
    them alive (measured: 0.555 dead against 0.0 with AuxK, with or without tied init)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "saes"))
    from synthetic import planted_dictionary

    from treesae.metrics import reconstruction_metrics
    from treesae.saes import build
    X, _, _ = planted_dictionary(d_in=64, n_features=1024, k=8, n_samples=40_000, seed=0)
    arms = {"neither": (False, False), "aux_k": (True, False), "both": (True, True)}
    saes = {n: build("topk", d_in=64, d_sae=512, k=2, seed=1, aux_k=a, tied_init=t) for n, (a, t) in arms.items()}
    cfg = TrainConfig(n_tokens=200_000, batch_size=512, lr=1e-2, lr_end=1e-3, log_every=100, checkpoint_every=0, threads=1)
    train_sweep(saes, X[:32_000], cfg, progress=False)
    dead = {n: reconstruction_metrics(s, X[32_000:])["dead_fraction"] for n, s in saes.items()}
    assert dead["neither"] > 0.3 and dead["aux_k"] < 0.05 and dead["both"] < 0.05, dead
