import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from treesae.analysis import position as P


class LinearSAE(torch.nn.Module):
    """ReLU SAE with given weights: encode = ReLU(x W_enc), decode = z W_dec."""

    def __init__(self, W_enc, W_dec):
        super().__init__()
        self.W_enc, self.W_dec = W_enc, W_dec

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, z):
        return z @ self.W_dec


def tiny(positional, n_layers=2, seed=0):
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, n_ctx=16,
                                  act_fn="gelu", normalization_type="LN", positional_embedding_type=positional,
                                  seed=seed)
    return HookedTransformer(cfg).eval()


def random_sae(d=32, d_sae=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return LinearSAE(torch.randn(d, d_sae, generator=g) / 6, torch.randn(d_sae, d, generator=g) / 8)


@pytest.fixture(scope="module")
def planted():
    """Activations [40, 12, 16] where direction e0 grows with position; latent 3 reads e0, the others
    read directions orthogonal to it; position 0 is a large-norm sink."""
    rng = np.random.default_rng(0)
    n, T, d, k = 40, 12, 16, 24
    x = rng.standard_normal((n, T, d)).astype(np.float32)
    x[:, :, 0] = 4.0 * np.arange(T) / T + 0.3 * rng.standard_normal((n, T))
    x[:, 0] *= 8
    W = rng.standard_normal((d, k)).astype(np.float32)
    W[0] = 0
    W[:, 3] = 0
    W[0, 3] = 1
    W /= np.linalg.norm(W, axis=0)
    sae = LinearSAE(torch.from_numpy(W), torch.from_numpy(W.T.copy()))
    return sae, x.astype(np.float16)


def test_position_profile_and_norms(planted):
    sae, x = planted
    prof = P.position_profile(sae, x, batch_contexts=7)
    assert list(prof.columns) == ["position", "n", "mean_act", "l0", "nmse", "resid_norm"]
    assert len(prof) == 12 and (prof.n == 40).all()
    xf = torch.from_numpy(x.astype(np.float32))
    z = sae.encode(xf)
    err = (xf - sae.decode(z)).pow(2).sum((0, 2)) / xf.pow(2).sum((0, 2))
    np.testing.assert_allclose(prof.nmse, err.numpy(), rtol=1e-4)
    np.testing.assert_allclose(prof.l0, (z != 0).float().sum(-1).mean(0).numpy(), rtol=1e-5)
    norms = P.residual_norm_by_position(x, batch_contexts=9)
    np.testing.assert_allclose(norms.norm_mean, prof.resid_norm, rtol=1e-5)
    assert norms.ratio.iloc[0] > 4  # the sink
    both = P.stack_layers({3: norms, 5: norms})
    assert list(both.columns[:2]) == ["layer", "position"] and len(both) == 24


def test_position_feature_ranked_first(planted):
    sae, x = planted
    pf = P.position_features(sae, x, include_first=False, min_active=1)
    assert pf.feature.iloc[0] == 3
    assert pf.eta2.iloc[0] > 0.8 and pf.eta2.iloc[1] < 0.2
    assert pf.corr_position.iloc[0] > 0.9 and pf.peak_position.iloc[0] == 11
    # with position 0 the sink's huge values dominate latent 3's variance differently, but the ranking holds
    assert P.position_features(sae, x, include_first=True, min_active=1).feature.iloc[0] == 3


def test_feature_deciles(planted):
    sae, x = planted
    dec = P.feature_deciles(sae, x, include_first=True, batch_contexts=5)
    dec0 = P.feature_deciles(sae, x, include_first=False)
    z = sae.encode(torch.from_numpy(x.astype(np.float32))).double()
    v = z[..., 3][z[..., 3] != 0].numpy()
    v0 = z[:, 1:, 3][z[:, 1:, 3] != 0].numpy()
    cols = [f"q{q}" for q in range(10, 100, 10)]
    np.testing.assert_allclose(dec.loc[3, cols].astype(float), np.quantile(v, np.arange(1, 10) / 10), rtol=1e-4)
    np.testing.assert_allclose(dec0.loc[3, cols].astype(float), np.quantile(v0, np.arange(1, 10) / 10), rtol=1e-4)
    assert dec.n_active[3] == len(v) and dec0.n_active[3] == len(v0)
    assert dec.include_first.all() and not dec0.include_first.any()


@pytest.mark.parametrize("positional", ["rotary", "standard"])
def test_position_intervention(positional):
    m = tiny(positional)
    tok = torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(0))
    clean = m(tok)
    saes = {0: random_sae(), 1: random_sae(seed=2)}
    for mode in P.position_modes(m):
        df = P.position_intervention(m, tok, [0, 1], saes, mode, batch_size=2)
        assert list(df.condition.unique()) == ["clean", mode] and len(df) == 4
        assert df[["resid_norm", "sae_nmse", "sae_l0", "lm_loss", "lm_loss_spliced"]].notna().all().all()
        c, i = df[df.condition == "clean"].set_index("layer"), df[df.condition == mode].set_index("layer")
        assert not np.isclose(c.lm_loss[0], i.lm_loss[0])  # the intervention changes the LM
        if positional == "rotary":  # position enters through attention only: layer 0's input is unchanged
            assert np.isclose(c.resid_norm[0], i.resid_norm[0]) and not np.isclose(c.resid_norm[1], i.resid_norm[1])
        else:
            assert not np.isclose(c.resid_norm[0], i.resid_norm[0])
        torch.testing.assert_close(m(tok), clean)  # everything restored
    with pytest.raises(ValueError):
        P.position_intervention(m, tok, [0], saes, "zero" if positional == "rotary" else "freeze")


def test_rotary_interventions_are_what_they_say():
    """freeze: a 1-layer model's last-position logits ignore the order of the prefix; permute: the rotated
    queries equal the un-rotated ones rotated by the permuted positions' angles."""
    m = tiny("rotary", n_layers=1)
    tok = torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(2))
    shuffled = torch.cat([tok[:, :-1][:, perm], tok[:, -1:]], 1)
    with P.position_intervened(m, "freeze", 16):
        torch.testing.assert_close(m(tok)[0, -1], m(shuffled)[0, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(m(tok)[0, -1], m(shuffled)[0, -1], atol=1e-3)
    attn = m.blocks[0].attn
    cos, sin = attn.rotary_cos[:16].clone(), attn.rotary_sin[:16].clone()
    with P.position_intervened(m, "freeze", 16):
        _, c0 = m.run_with_cache(tok)
    with P.position_intervened(m, "permute", 16, seed=3):
        _, c1 = m.run_with_cache(tok)
    perm = torch.from_numpy(np.random.default_rng(3).permutation(16))
    q = c0["blocks.0.attn.hook_rot_q"]  # angle 0: un-rotated
    want = q * cos[perm][None, :, None] + attn.rotate_every_two(q) * sin[perm][None, :, None]
    torch.testing.assert_close(c1["blocks.0.attn.hook_rot_q"], want, atol=1e-5, rtol=1e-5)


def test_lm_vs_sae_loss():
    m = tiny("rotary")
    tok = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(0))
    saes = {0: random_sae(), 1: random_sae(seed=2)}
    df = P.lm_vs_sae_loss(m, saes, tok, batch_size=2)
    assert len(df) == 2 * 3 * 14 and df.position.min() == 1 and df.position.max() == 14
    with torch.no_grad():
        logp = torch.log_softmax(m(tok), -1)
    ce = -logp[:, :-1].gather(-1, tok[:, 1:, None])[..., 0]
    np.testing.assert_allclose(df[df.layer == 0].ce_clean, ce[:, 1:].reshape(-1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(df.ce_increase, df.ce_spliced - df.ce_clean)
    # an exact "SAE" (ReLU(x) - ReLU(-x) = x) gives zero increase and zero error
    eye = torch.eye(32)
    ident = LinearSAE(torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0))
    x = P.lm_vs_sae_loss(m, {1: ident}, tok)
    assert np.abs(x.ce_increase).max() < 1e-4 and x.sae_nmse.max() < 1e-10
    frozen = P.lm_vs_sae_loss(m, {1: ident}, tok, position_mode="freeze")
    assert not np.allclose(frozen.ce_clean, x.ce_clean)


class Bar:
    """A progress bar that records its updates."""

    def __init__(self):
        self.updates = []

    def update(self, n=1):
        self.updates.append(n)


def test_progress_counts_contexts_and_changes_nothing(planted):
    sae, x = planted  # 40 contexts, batches of 7
    for fn, kw in ((P.position_profile, {}), (P.feature_deciles, dict(include_first=True)), (P.position_features, {})):
        bar = Bar()
        pd.testing.assert_frame_equal(fn(sae, x, batch_contexts=7, progress=bar, **kw),
                                      fn(sae, x, batch_contexts=7, **kw))
        assert bar.updates == [7] * 5 + [5], fn.__name__
    m = tiny("rotary")
    tok = torch.randint(0, 50, (5, 16), generator=torch.Generator().manual_seed(0))
    saes = {1: random_sae()}
    bar = Bar()
    pd.testing.assert_frame_equal(P.position_intervention(m, tok, [0, 1], saes, "permute", batch_size=2, progress=bar),
                                  P.position_intervention(m, tok, [0, 1], saes, "permute", batch_size=2))
    assert bar.updates == [2, 2, 1] * 2  # clean, then permuted
    bar = Bar()
    pd.testing.assert_frame_equal(P.lm_vs_sae_loss(m, saes, tok, batch_size=2, progress=bar),
                                  P.lm_vs_sae_loss(m, saes, tok, batch_size=2))
    assert bar.updates == [2, 2, 1]
