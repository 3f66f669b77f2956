"""Metrics: known answers by brute force, batching, per-level versions, and splicing identities."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from treesae.metrics import downstream_metrics, reconstruction_metrics


class ReLUSAE(nn.Module):
    """Tiny ReLU SAE with arbitrary levels (cumulative=True: prefixes of levels reconstruct)."""

    def __init__(self, d_in=12, widths=(8, 16), seed=0, cumulative=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d_sae = sum(widths)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5)
        self.b_enc = nn.Parameter(torch.randn(d_sae, generator=g) * 0.3)
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5)
        self.b_dec = nn.Parameter(torch.randn(d_in, generator=g) * 0.1)
        with torch.no_grad():
            self.b_enc[3] = -1e6  # latent 3 never fires
        bounds = np.cumsum((0,) + tuple(widths))
        self.levels = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.cumulative = cumulative

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec

    def forward(self, x):
        return self.decode(self.encode(x))


def _acts(n=1050, d=12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 2, d) + 0.7


def test_reconstruction_metrics_brute_force():
    sae, x = ReLUSAE(), _acts()
    m = reconstruction_metrics(sae, x, batch_size=100)  # 1050 rows: last batch is partial
    with torch.no_grad():
        z = sae.encode(x).double()
        err = (x.double() - sae.decode(z.float()).double()).pow(2).sum()
        l0_tok = (z != 0).sum(1).double()
        cum0 = z.clone()
        cum0[:, 8:] = 0
        err0 = (x.double() - sae.decode(cum0.float()).double()).pow(2).sum()
    xd = x.double()
    assert m["nmse"] == pytest.approx(float(err / xd.pow(2).sum()), rel=1e-6)
    fvu = float(err / (xd - xd.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-6) and m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-6)
    assert m["fvu"] > m["nmse"]  # the data has a non-zero mean
    assert m["l0"] == pytest.approx(float(l0_tok.mean()))
    for q in (10, 50, 90):
        assert m[f"l0_p{q}"] == pytest.approx(float(np.quantile(l0_tok.numpy(), q / 100)))
    assert m["dead_window_tokens"] == 1050
    assert m["dead_fraction"] == pytest.approx(float(((z != 0).sum(0) == 0).double().mean())) and m["dead_fraction"] >= 1 / 24
    assert m["dead_fraction_level0"] >= 1 / 8
    assert m["l0_level0"] + m["l0_level1"] == pytest.approx(m["l0"])
    assert m["l0_level0"] == pytest.approx(float((z[:, :8] != 0).sum(1).double().mean()))
    assert m["nmse_cumulative_level1"] == pytest.approx(m["nmse"], rel=1e-9)
    assert m["nmse_cumulative_level0"] == pytest.approx(float(err0 / xd.pow(2).sum()), rel=1e-6)
    # batch size does not change the numbers; numpy float16 input is cast per batch
    m2 = reconstruction_metrics(sae, x, batch_size=4096)
    assert all(m2[k] == pytest.approx(v, rel=1e-9) for k, v in m.items())
    m16 = reconstruction_metrics(sae, x.half().numpy(), batch_size=128)
    assert m16["nmse"] == pytest.approx(m["nmse"], rel=1e-2)
    # flat SAEs / non-cumulative SAEs report no per-level (cumulative) keys
    flat = reconstruction_metrics(ReLUSAE(widths=(24,)), x)
    assert not any("level" in k for k in flat)
    assert not any("cumulative" in k for k in reconstruction_metrics(ReLUSAE(cumulative=False), x))


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


class Noisy(nn.Module):
    def forward(self, x):
        return x + 0.3 * x.std() * torch.randn_like(x)


@pytest.fixture(scope="module")
def tiny_lm():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=64,
                                      act_fn="gelu", normalization_type="LN", seed=0, initializer_range=0.3,
                                      device="cpu")
        return HookedTransformer(cfg)


def test_downstream_identities(tiny_lm):
    tok = torch.randint(0, 64, (10, 16), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_pre"
    ident = downstream_metrics(tiny_lm, Identity(), tok, hook, batch_size=4)
    assert abs(ident["ce_increase"]) < 1e-5 and ident["ce_score"] == pytest.approx(1, abs=1e-4)
    assert ident["kl_sae"] < 1e-6 and ident["kl_score"] == pytest.approx(1, abs=1e-4)
    assert abs(ident["ce_zero"] - ident["ce_clean"]) > 0.1 and ident["kl_zero"] > 0.1  # the identities are not vacuous
    zero = downstream_metrics(tiny_lm, Zero(), tok, hook, batch_size=3)
    assert zero["ce_score"] == pytest.approx(0, abs=1e-5) and zero["kl_score"] == pytest.approx(0, abs=1e-5)
    assert zero["ce_clean"] == pytest.approx(ident["ce_clean"], rel=1e-6)
    torch.manual_seed(0)
    noisy = downstream_metrics(tiny_lm, Noisy(), tok, hook)
    assert noisy["kl_sae"] > 1e-4 and noisy["kl_score"] < 1
    # exclude_first: predictions from positions 1..T-2 are scored; clean CE equals transformer_lens' own loss there
    with torch.no_grad():
        per_tok = tiny_lm(tok, return_type="loss", loss_per_token=True)  # [n, T-1]: prediction of token t+1
    assert ident["n_predictions"] == 10 * 14
    assert ident["ce_clean"] == pytest.approx(float(per_tok[:, 1:].mean()), rel=1e-5)
    allpos = downstream_metrics(tiny_lm, Zero(), tok, hook, exclude_first=False)
    assert allpos["n_predictions"] == 10 * 15
    assert allpos["ce_clean"] == pytest.approx(float(per_tok.mean()), rel=1e-5)
    # exclude_first keeps position 0 clean: same as zeroing positions 1.. by hand and scoring predictions 1..T-2

    def zero_after_first(act, hook):
        act = act.clone()
        act[:, 1:] = 0
        return act

    with torch.no_grad():
        manual = tiny_lm.run_with_hooks(tok, return_type="loss", loss_per_token=True,
                                           fwd_hooks=[(hook, zero_after_first)])
    assert zero["ce_zero"] == pytest.approx(float(manual[:, 1:].mean()), rel=1e-5)
    assert allpos["ce_zero"] != pytest.approx(float(manual.mean()), rel=1e-3)


def test_downstream_standard_errors_and_sinks(tiny_lm):
    from treesae.metrics import _replace
    tok = torch.randint(0, 64, (10, 16), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_pre"
    zero = downstream_metrics(tiny_lm, Zero(), tok, hook, batch_size=3)

    def zero_after_first(act, hook):
        act = act.clone()
        act[:, 1:] = 0
        return act

    with torch.no_grad():  # the standard error over contexts of the per-context mean CE increase, by hand
        clean = tiny_lm(tok, return_type="loss", loss_per_token=True)[:, 1:].mean(1)
        ablated = tiny_lm.run_with_hooks(tok, return_type="loss", loss_per_token=True,
                                         fwd_hooks=[(hook, zero_after_first)])[:, 1:].mean(1)
    inc = (ablated - clean).double()
    assert zero["n_contexts"] == 10
    assert zero["ce_increase_se"] == pytest.approx(float(inc.std() / 10 ** 0.5), rel=1e-4) and zero["ce_increase_se"] > 0
    # attention sinks keep their clean activation, as position 0 does
    act = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    act[1, 3] *= 1000
    out = _replace(act, 1, 10.0, torch.zeros_like)
    assert torch.equal(out[:, 0], act[:, 0]) and torch.equal(out[1, 3], act[1, 3])
    assert (out[0, 1:] == 0).all() and (out[1, 1:3] == 0).all() and (out[1, 4:] == 0).all()
    assert (_replace(act, 1, None, torch.zeros_like)[1, 3] == 0).all()


class Half(nn.Module):
    def forward(self, x):
        return 0.5 * x


def test_downstream_reference_is_reused_and_matches_a_full_forward(tiny_lm):
    from treesae.metrics import downstream_reference
    tok = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(1))
    hook = "blocks.1.hook_resid_pre"
    ref = downstream_reference(tiny_lm, tok, hook, batch_size=4)
    half = downstream_metrics(tiny_lm, Half(), tok, hook, batch_size=4, reference=ref)
    assert half == downstream_metrics(tiny_lm, Half(), tok, hook, batch_size=4)

    def halve_after_first(act, hook):
        act = act.clone()
        act[:, 1:] *= 0.5
        return act

    with torch.no_grad():  # the spliced run starts at the hook's layer; a full forward gives the same CE
        full = tiny_lm.run_with_hooks(tok, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, halve_after_first)])
    assert half["ce_sae"] == pytest.approx(float(full[:, 1:].mean()), rel=1e-5) and abs(half["ce_increase"]) > 1e-3
    with pytest.raises(ValueError, match="reference was computed for other tokens"):
        downstream_metrics(tiny_lm, Half(), tok[:, :8], hook, batch_size=4, reference=ref)
    with pytest.raises(ValueError, match="splice at blocks.<L>.hook_resid_pre"):
        downstream_reference(tiny_lm, tok, "blocks.1.hook_resid_mid")


def test_per_level_metrics_of_the_real_architectures():
    from treesae.saes import build
    x = _acts(600, 16)
    cfgs = {"topk": dict(d_sae=64, k=4), "matryoshka": dict(d_sae=64, k=4, prefixes=[8, 32]),
            "stacked": dict(widths=[8, 16, 32], k=2), "residual": dict(widths=[8, 16, 32], k=2),
            "tree": dict(widths=[8, 16, 32], k=2)}
    for arch, c in cfgs.items():
        sae = build(arch, d_in=16, **c)
        sae.init_from_sample(x)
        m = reconstruction_metrics(sae, x, batch_size=256)
        n_levels = len(sae.levels)
        assert sae.training  # the mode is restored
        if n_levels == 1:
            assert not any("level" in k for k in m), arch
            assert m["l0"] == m["l0_p50"] == 4
            continue
        assert sum(m[f"l0_level{i}"] for i in range(n_levels)) == pytest.approx(m["l0"]), arch
        assert all(0 <= m[f"dead_fraction_level{i}"] <= 1 for i in range(n_levels)), arch
        cum = [m.get(f"nmse_cumulative_level{i}") for i in range(n_levels)]
        if arch == "stacked":  # trains only its final reconstruction (level_loss="final")
            assert cum == [None] * n_levels
        else:
            assert cum[-1] == pytest.approx(m["nmse"], rel=1e-6), arch
    tree = build("tree", d_in=16, widths=[8, 16, 32], k=2)
    m = reconstruction_metrics(tree, x)
    assert m["l0_level1"] <= 2 * m["l0_level0"] + 1e-9  # children fire only under active parents
