import pytest
import torch

from treesae import registry
from treesae.saes import (ARCHITECTURES, architecture, build, fired, geometric_median, load_sae, make_config, names,
                          save_sae, traits)
from treesae.saes.base import BaseSAE
from treesae.saes.hierarchical import HierarchicalSAE
from treesae.train import validate

SMALL = {a: dict(d_sae=42, k=6) for a in names()}  # every registered architecture, by the sweep's target
PAPER = ["relu", "topk", "batchtopk", "matryoshka", "stacked", "residual", "tree"]


def test_registry_holds_every_architecture_with_its_contract():
    """Registered under its config's name, with a sae-lens export and a display rank of its own."""
    assert set(PAPER) <= set(ARCHITECTURES) == set(names())
    for name, cls in ARCHITECTURES.items():
        assert cls.config_class.architecture == name
        assert cls.sae_lens_spec is not BaseSAE.sae_lens_spec, name
    assert len({traits(n).display_order for n in ARCHITECTURES}) == len(ARCHITECTURES) == len(registry.ARCHITECTURES)


def test_traits_replace_name_lists():
    """Figures, analyses and the sweep ask the registry, in display order, instead of listing names."""
    assert [a for a in names() if a in PAPER] == PAPER
    assert [a for a in names(hierarchical=True) if a in PAPER] == ["stacked", "residual", "tree"]
    assert [a for a in names(multi_level=True) if a in PAPER] == ["matryoshka", "stacked", "residual", "tree"]
    assert [a for a in names(fixed_l0=False) if a in PAPER] == ["relu"]
    assert all(issubclass(architecture(a), HierarchicalSAE) for a in names(hierarchical=True))
    assert traits("tree").hierarchical and not traits("matryoshka").hierarchical
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'; known: batchtopk"):
        architecture("gated")


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_build_from_the_sweep_target(arch):
    """``build(arch, d_in=, d_sae=, k=)`` works for every architecture: the config maps the target to its own
    fields (k per token, k summed over levels, or ReLU's L1 coefficient by k)."""
    extra = {"l1_coef_by_k": {6: 0.3}} if arch == "relu" else {}
    sae = build(arch, d_in=8, d_sae=48, k=6, **extra)
    if traits(arch).hierarchical:
        assert sum(sae.cfg.ks) == 6 and sae.cfg.ks == [2, 2, 2] and sae.d_sae <= 48
    elif sae.cfg.architecture == "relu":
        assert sae.cfg.l1_coef == 0.3 and sae.d_sae == 48
        assert build(arch, d_in=8, d_sae=48, k=6).cfg.l1_coef == make_config("relu", d_in=8, d_sae=48).l1_coef
        with pytest.raises(ValueError, match=r"l1_coef_by_k has no entry for k=6 \(it has \[4\]\)"):
            build(arch, d_in=8, d_sae=48, k=6, l1_coef_by_k={4: 0.1})
    else:
        assert sae.cfg.k == 6 and sae.d_sae == 48


@pytest.mark.parametrize("arch", ["stacked", "residual", "tree"])
def test_hierarchical_config_records_its_real_k(arch, tmp_path):
    """The saved config holds the per-level k the SAE uses (k is level 0's), not an unused default of 32, so
    a dictionary narrower than 32 latents trains and reloads."""
    sae = build(arch, d_in=8, d_sae=21, k=5)
    assert sae.cfg.ks == [1, 2, 2] and sae.cfg.k == 1 and sae.d_sae <= 21
    validate({"s": sae}, torch.randn(16, 8))
    back = load_sae(save_sae(sae, tmp_path / arch))
    assert back.cfg == sae.cfg and back.cfg.ks == [1, 2, 2]
    with pytest.raises(ValueError, match="give ks or k, not both"):
        build(arch, d_in=8, size=21, k=3, ks=[1, 2, 2])


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'gated'; known: batchtopk, matryoshka, relu, residual, stacked, topk, tree"):
        build("gated", d_in=8)


def test_unknown_config_field_is_reported():
    with pytest.raises(ValueError, match=r"TopKConfig has no field\(s\) \['kk'\]"):
        make_config("topk", d_in=8, d_sae=16, kk=3)


@pytest.mark.parametrize("bad, msg", [(dict(d_in=0), "d_in must be an integer >= 1, got 0"),
                                      (dict(d_in=8.0), "d_in must be an integer >= 1, got 8.0"),
                                      (dict(seed=-1), "seed must be an integer >= 0")])
def test_common_config_validation(bad, msg):
    with pytest.raises(ValueError, match=msg):
        build("topk", **({"d_in": 8, "d_sae": 16, "k": 2} | bad))


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_interface_shapes_and_determinism(arch, x_small):
    a, b, c = (build(arch, d_in=12, seed=s, **SMALL[arch]) for s in (3, 3, 4))
    for n, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[n]), n
    assert any(not torch.equal(p, c.state_dict()[n]) for n, p in a.state_dict().items() if p.ndim == 2)
    assert a.W_dec.shape == (a.d_sae, 12) and a.b_dec.shape == (12,)
    z = a.encode(x_small)
    assert z.shape == (48, a.d_sae)
    assert a(x_small).shape == x_small.shape
    torch.testing.assert_close(a.decode(z), a(x_small))
    assert sum(sl.stop - sl.start for sl in a.levels) == a.d_sae
    dead = torch.zeros(a.d_sae, dtype=torch.bool)
    dead[::2] = True
    loss, logs, z = a.training_loss(x_small, dead)
    assert loss.ndim == 0 and loss.requires_grad
    assert z.shape == (48, a.d_sae) and not z.requires_grad
    for key in ("loss", "mse", "nmse", "l0", "aux"):
        assert logs[key].ndim == 0 and not logs[key].requires_grad, key
    assert logs["l0"] == (z > 0).sum() / 48
    _, _, zs = a.training_loss(x_small, dead, dense_z=False)
    assert zs.is_sparse and torch.equal(zs.to_dense(), z)
    assert torch.equal(fired(zs), fired(z)) and torch.equal(fired(z), (z > 0).any(0))


def test_geometric_median_on_planted_cloud():
    gen = torch.Generator().manual_seed(0)
    center = torch.tensor([3.0, -2.0, 5.0, 1.0])
    inliers = center + 0.1 * torch.randn(900, 4, generator=gen)
    outliers = center + 50 + 10 * torch.randn(100, 4, generator=gen)  # drags the mean far away
    x = torch.cat([inliers, outliers])
    m = geometric_median(x)
    assert (m.float() - center).norm() < 0.05
    assert (x.mean(0) - center).norm() > 5
    # optimality: the sum of unit vectors towards the points vanishes at the median
    u = (x.double() - m) / (x.double() - m).norm(dim=1, keepdim=True)
    assert u.sum(0).norm() < 1e-3 * len(x)


def test_init_from_sample_sets_b_dec_to_the_median():
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0)) + 4
    sae = build("topk", d_in=8, d_sae=16, k=2)
    sae.init_from_sample(x)
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(x).float())
    off = build("topk", d_in=8, d_sae=16, k=2, geometric_median_init=False)
    off.init_from_sample(x)
    assert torch.equal(off.b_dec.detach(), torch.zeros(8))


@pytest.mark.parametrize("arch", ["topk", "tree"])
def test_decoder_rows_stay_unit_and_parallel_gradient_is_removed(arch, x_small):
    sae = build(arch, d_in=12, **SMALL[arch])
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        sae.training_loss(x_small)[0].backward()
        sae.before_optimizer_step()
        parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
        assert parallel.abs().max() < 1e-6 * sae.W_dec.grad.norm()
        opt.step()
        sae.after_optimizer_step()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-6)


def test_normalize_decoder_off_leaves_the_decoder_alone(x_small):
    sae = build("topk", d_in=12, d_sae=32, k=4, normalize_decoder=False, decoder_init_norm=0.5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((32,), 0.5))
    sae.training_loss(x_small)[0].backward()
    g = sae.W_dec.grad.clone()
    sae.before_optimizer_step()
    assert torch.equal(sae.W_dec.grad, g)
    with torch.no_grad():
        sae.W_dec.mul_(3)
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((32,), 1.5))


def test_input_width_is_checked_and_dtype_cast():
    sae = build("tree", d_in=12, widths=[4, 8], k=2)
    with pytest.raises(ValueError, match=r"expects inputs of shape \[batch, d_in=12\], got \(5, 11\)"):
        sae.encode(torch.randn(5, 11))
    with pytest.raises(ValueError, match="flatten the token dimensions first"):
        sae.training_loss(torch.randn(2, 5, 12))
    assert sae.double().encode(torch.randn(5, 12)).dtype == torch.float64


def test_a_new_architecture_is_its_module_and_one_registry_line(monkeypatch, tmp_path, x_small):
    """What docs/DESIGN.md promises: a module (here a TopK variant defined in the test) and its line in
    ``treesae.registry.ARCHITECTURES`` make it buildable from a sweep's target, validated in params, trained, exported to
    sae-lens and back, ranked and coloured in figures, with no other file touched."""
    from dataclasses import dataclass
    from types import SimpleNamespace
    from typing import ClassVar

    from sae_lens import SAE

    from treesae import config
    from treesae import figures as F
    from treesae.runs import Run
    from treesae.saes import build_run
    from treesae.saes import TopKConfig, TopKSAE
    from treesae.stages.train import check
    from treesae.train import TrainConfig, train_sweep

    @dataclass(kw_only=True)
    class DemoConfig(TopKConfig):
        architecture: ClassVar[str] = "demo"

    class DemoSAE(TopKSAE):
        config_class = DemoConfig

    monkeypatch.setitem(registry.ARCHITECTURES, "demo", registry.Architecture(DemoSAE, 50))  # the one registry line
    assert ARCHITECTURES["demo"] is DemoSAE and "demo" in ARCHITECTURES
    assert names()[-1] == "demo" and F.color("demo") not in {F.color(a) for a in names()[:-1]}
    train = {"base": dict(architecture="demo", corpus="brown", layer=3, d_sae=48, k=4, seed=0),
             "grids": {"frontier": {"architecture": ["topk"]}}}
    c = check(config.ModelParams(), SimpleNamespace(corpora=["brown"], layers=[3]), train)
    sae = build_run(c["runs"][0], 12, {})
    assert type(sae) is DemoSAE and sae.cfg.k == 4
    train_sweep({"d": sae}, x_small, TrainConfig(n_tokens=480, batch_size=48, threads=1, checkpoint_every=0), progress=False)
    back = load_sae(save_sae(sae, tmp_path / "demo"))
    assert type(back) is DemoSAE and torch.equal(back(x_small), sae(x_small))
    assert torch.allclose(SAE.load_from_disk(str(tmp_path / "demo")).encode(x_small), sae.encode(x_small), atol=1e-5)
    assert Run("demo", "brown", 3, 48, 4, 0).init_seed() != Run("topk", "brown", 3, 48, 4, 0).init_seed()
