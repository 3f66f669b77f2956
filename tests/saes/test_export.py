import json

import pytest
import torch
from sae_lens import SAE

from treesae.saes import build, load_sae, names, save_sae

RESCALE = dict(normalize_decoder=False, rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1)
CASES = {
    "topk": ("topk", dict(d_sae=40, k=4)),
    "batchtopk": ("jumprelu", dict(d_sae=40, k=4)),
    "matryoshka": ("jumprelu", dict(d_sae=40, k=4, prefixes=[5, 15])),
    "matryoshka_topk": ("topk", dict(d_sae=40, k=4, prefixes=[5, 15], selection="topk")),
    "topk_rescaled": ("topk", dict(d_sae=40, k=4, **RESCALE)),
    "batchtopk_rescaled": ("jumprelu", dict(d_sae=40, k=4, **RESCALE)),
    "matryoshka_rescaled": ("jumprelu", dict(d_sae=40, k=4, prefixes=[5, 15], **RESCALE)),
    "relu": ("standard", dict(d_sae=40, apply_b_dec_to_input=True)),
    "stacked": ("treesae_stacked", dict(widths=[6, 12, 24], k=2, level_residual=True)),
    "stacked_plain": ("treesae_stacked", dict(widths=[6, 12], k=3, layer_norm=False)),
    "residual": ("treesae_residual", dict(widths=[6, 12, 24], k=2)),
    "tree": ("treesae_tree", dict(widths=[4, 12], ks=[2, 5], branching=3)),
    "tree_global": ("treesae_tree", dict(widths=[4, 12], ks=[2, 5], branching=3, budget="global")),
    "tree_fixed": ("treesae_tree", dict(widths=[4, 12], ks=[2, 5], branching=3, parent_rule="fixed", budget="level")),
}


def trained(arch, x, **cfg):
    sae = build(arch, d_in=12, seed=7, **cfg)
    if getattr(sae, "parent_rule", None) == "learned":  # a planted tree: adoption needs more steps than these
        sae.parent_index[4:].copy_(torch.arange(sae.d_sae - 4) % 4)
    sae.init_from_sample(x)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[::5] = True
    for _ in range(3):
        opt.zero_grad()
        sae.training_loss(x, dead)[0].backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
    return sae.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_through_sae_lens(case, x_small, tmp_path):
    sl_arch, cfg = CASES[case]
    arch = case.split("_")[0]
    sae = trained(arch, x_small, **cfg)
    save_sae(sae, tmp_path, metadata={"model_name": "smollm2-135m", "hook_name": "blocks.6.hook_resid_pre"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors", "treesae.json"]
    info = json.loads((tmp_path / "treesae.json").read_text())
    assert info["architecture"] == arch and info["sae_lens_architecture"] == sl_arch
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == sl_arch

    with torch.no_grad():
        ours = sae(x_small)
        z = sae.encode(x_small)
        sl = SAE.load_from_disk(tmp_path)
        assert sl.cfg.metadata.hook_name == "blocks.6.hook_resid_pre"
        torch.testing.assert_close(sl.encode(x_small), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sl.decode(sl.encode(x_small)), ours, rtol=1e-5, atol=1e-5)
        assert (z > 0).any()
        x3 = x_small[:12].reshape(3, 4, -1)  # [batch, pos, d], as HookedSAETransformer passes activations
        torch.testing.assert_close(sl.encode(x3), z[:12].reshape(3, 4, -1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sl(x3), ours[:12].reshape(3, 4, -1), rtol=1e-5, atol=1e-5)

        back = load_sae(tmp_path)
        assert type(back) is type(sae) and back.cfg == sae.cfg and not back.training
        if "rescaled" in case:  # the export folds the decoder norms into the encoder: unit rows, same SAE
            torch.testing.assert_close(back.W_dec.norm(dim=1), torch.ones(sae.d_sae))
            torch.testing.assert_close(back(x_small), ours, rtol=1e-5, atol=1e-5)
            return
        for name, t in sae.state_dict().items():
            if name not in sae.training_only:  # training-only counters, not exported
                assert torch.equal(back.state_dict()[name], t), name
        torch.testing.assert_close(back(x_small), ours, rtol=0, atol=0)


@pytest.mark.parametrize("arch", names())
def test_every_architecture_round_trips_at_a_sweep_target(arch, x_small, tmp_path):
    """Whatever is registered (a new architecture too) exports through its own ``sae_lens_spec`` and reloads."""
    sae = trained(arch, x_small, d_sae=40, k=6)
    save_sae(sae, tmp_path)
    with torch.no_grad():
        sl = SAE.load_from_disk(tmp_path)
        torch.testing.assert_close(sl.decode(sl.encode(x_small)), sae(x_small), rtol=1e-5, atol=1e-5)
        back = load_sae(tmp_path)
        assert back.cfg == sae.cfg
        torch.testing.assert_close(back(x_small), sae(x_small), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["tree", "tree_fixed"])
def test_tree_parent_of_survives_sae_lens(case, tmp_path, x_small):
    sae = trained("tree", x_small, **CASES[case][1])
    save_sae(sae, tmp_path)
    assert torch.equal(SAE.load_from_disk(tmp_path).parent_of, sae.parent_of)
    assert (sae.parent_of[4:] >= 0).any()


def test_float64_round_trip(tmp_path, x_small):
    sae = build("tree", d_in=12, widths=[4, 8], k=2).double()
    with torch.no_grad():
        sae.W_dec.add_(1e-12)  # not representable in float32
    save_sae(sae, tmp_path)
    assert SAE.load_from_disk(tmp_path).W_dec.dtype == torch.float64
    back = load_sae(tmp_path)
    assert back.W_dec.dtype == torch.float64 and torch.equal(back.W_dec, sae.W_dec)


def test_load_sae_needs_treesae_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no treesae.json"):
        load_sae(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "cfg_d_in", "treesae_d_sae"])
def test_a_damaged_or_edited_sae_is_refused_by_name_with_the_fix(tmp_path, damage):
    sae = build("topk", d_in=16, d_sae=32, k=4)
    save_sae(sae, tmp_path)
    if damage == "truncated":
        w = tmp_path / "sae_weights.safetensors"
        w.write_bytes(w.read_bytes()[:50])
    else:
        name, key = {"cfg_d_in": ("cfg.json", "d_in"), "treesae_d_sae": ("treesae.json", "d_sae")}[damage]
        c = json.loads((tmp_path / name).read_text())
        (c if name == "cfg.json" else c["config"])[key] += 1
        (tmp_path / name).write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"(sae_weights.safetensors: cannot be read|cfg.json says|treesae.json says).*dvc checkout"):
        load_sae(tmp_path)


def test_load_saes_refuses_an_sae_whose_files_belong_to_another_run(tmp_path, monkeypatch):
    from treesae.saes import load_saes
    monkeypatch.setenv("TREESAE_ROOT", str(tmp_path))
    for name, arch, layer in (("topk-brown-L15-d32-k4-s0", "topk", 15), ("batchtopk-brown-L3-d32-k4-s0", "batchtopk", 3)):
        save_sae(build(arch, d_in=16, d_sae=32, k=4), tmp_path / "data/saes" / name,
                 metadata={"hook_name": f"blocks.{layer}.hook_resid_pre"})
    assert set(load_saes(["topk-brown-L15-d32-k4-s0", "batchtopk-brown-L3-d32-k4-s0"])) == {
        "topk-brown-L15-d32-k4-s0", "batchtopk-brown-L3-d32-k4-s0"}
    save_sae(build("topk", d_in=16, d_sae=32, k=4), tmp_path / "data/saes/topk-brown-L3-d32-k4-s0",
             metadata={"hook_name": "blocks.15.hook_resid_pre"})  # layer 15's SAE under a layer-3 run's name
    with pytest.raises(ValueError, match=r"holds a topk SAE at blocks\.15\.hook_resid_pre, not run topk-brown-L3-d32-k4-s0's.*dvc checkout"):
        load_saes(["topk-brown-L3-d32-k4-s0"])
