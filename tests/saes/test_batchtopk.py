import pytest
import torch

from treesae.saes import BatchTopKConfig, build


def test_config_validation():
    with pytest.raises(ValueError, match="threshold_lr must be in"):
        BatchTopKConfig(d_in=8, d_sae=16, k=2, threshold_lr=0.0)
    with pytest.raises(ValueError, match="k=17 is larger than the dictionary"):
        BatchTopKConfig(d_in=8, d_sae=16, k=17)


def test_training_keeps_k_times_batch_over_the_batch(x_small):
    sae = build("batchtopk", d_in=12, d_sae=40, k=3, tied_init=False)
    sae.init_from_sample(x_small)
    _, logs, z = sae.training_loss(x_small)
    assert (z > 0).sum() == 3 * 48 and logs["l0"] == 3
    per_token = (z > 0).sum(1)
    assert per_token.min() < per_token.max()  # free to vary per token
    pre = torch.addmm(sae.b_enc, x_small - sae.b_dec, sae.W_enc).detach().relu()
    assert z[z > 0].min() >= pre.flatten().topk(3 * 48).values.min()


def test_threshold_is_a_running_min_and_used_in_eval(x_small):
    sae = build("batchtopk", d_in=12, d_sae=40, k=3, threshold_lr=0.5)
    assert sae.threshold == 0
    _, _, z = sae.training_loss(x_small)
    torch.testing.assert_close(sae.threshold, z[z > 0].min())  # first update: the mean of one batch's min
    before = sae.threshold.clone()
    sae.eval()
    sae.training_loss(x_small)  # eval mode: no update
    assert torch.equal(sae.threshold, before)
    z = sae.encode(x_small)
    pre = torch.addmm(sae.b_enc, x_small - sae.b_dec, sae.W_enc).detach()
    torch.testing.assert_close(z, pre.relu() * (pre > sae.threshold))


@pytest.mark.parametrize("extra", [{}, dict(normalize_decoder=False, rescale_acts_by_decoder_norm=True)])
def test_sparse_and_dense_paths_agree(sparse_vs_dense, x_small, extra):
    dead = torch.zeros(40, dtype=torch.bool)
    dead[5:20] = True
    sparse_vs_dense("batchtopk", x_small, dead, d_in=12, d_sae=40, k=3, k_aux=4, **extra)


def test_inference_threshold_is_unbiased_after_few_steps():
    """The threshold is the mean of the batches' smallest kept values from the first step on, so
    eval-mode L0 is close to k after a handful of steps (an EMA from zero would let many more through)."""
    torch.manual_seed(0)
    sae = build("batchtopk", d_in=32, d_sae=256, k=8, seed=0)
    mins = []
    for _ in range(5):
        x = torch.randn(512, 32)
        _, _, z = sae.training_loss(x)
        mins.append(float(z.coalesce().values().clamp_min(0)[z.coalesce().values() > 0].min()) if z.is_sparse
                    else float(z[z > 0].min()))
    assert sae.threshold.item() == pytest.approx(sum(mins) / len(mins), rel=1e-5)
    sae.eval()
    l0 = (sae.encode(torch.randn(4096, 32)) != 0).sum(1).float().mean().item()
    assert 4 < l0 < 16, l0


@pytest.mark.parametrize("arch, extra", [("batchtopk", {}), ("matryoshka", {}), (
    "batchtopk", dict(normalize_decoder=False, rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1))])
def test_calibrated_threshold_gives_l0_k_on_held_out_data(arch, extra):
    """calibrate_threshold on training activations sets the threshold so that held-out L0 is within 5% of
    k, from whatever the running estimate was (here forced too low and too high: L0 far off k)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import planted_dictionary
    from treesae.train import TrainConfig, train_sweep
    X, _, _ = planted_dictionary(d_in=32, n_features=96, k=6, n_samples=40_000, seed=0)
    train, held = X[:32_000], X[32_000:]
    sae = build(arch, d_in=32, d_sae=96, k=8, seed=5, **extra)
    train_sweep({"a": sae}, train, TrainConfig(n_tokens=100_000, batch_size=512, lr=3e-3, checkpoint_every=0,
                                                threads=1), progress=False)
    l0 = lambda x: (sae.encode(x) != 0).sum(1).float().mean().item()
    for forced in (0.5, 2.0):
        with torch.no_grad():
            sae.threshold.mul_(forced)
        assert abs(l0(held) - 8) / 8 > 0.1  # the control: a wrong threshold puts L0 far from k
        sae.calibrate_threshold(train[:8192])
        assert abs(l0(train[:8192]) - 8) < 1e-3 * 8 + 1 / 8192  # exact on the calibration sample (no ties)
        assert abs(l0(held) - 8) / 8 < 0.05, l0(held)
