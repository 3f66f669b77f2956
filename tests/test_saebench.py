"""SAEBench's core eval on our SAEs (treesae.saebench): offline, on our contexts, with position 0 and attention sinks
left out by position (our contexts carry no BOS to exclude by id), it reproduces our CE and KL with the SAE
spliced in."""
import pytest
import torch

from treesae import metrics, saebench
from treesae.saes import build

HOOK = "blocks.2.hook_resid_pre"


def test_excluded_matches_positions_of_the_last_batch_only():
    tokens = torch.arange(24).reshape(4, 6)
    excluded = torch.zeros(4, 6, dtype=torch.bool)
    excluded[:, 0] = excluded[2, 3] = True
    store = saebench.TokenStore(tokens, excluded, 2)
    ex = saebench.Excluded(store)
    a = store.get_batch_tokens(2)
    assert torch.equal(a == ex, excluded[:2]) and {ex} == {ex}  # torch defers to Excluded; a set entry, as SAEBench keeps it
    b = store.get_batch_tokens()
    assert torch.equal(b == ex, excluded[2:])
    with pytest.raises(RuntimeError, match="not the store's last batch"):
        _ = a == ex
    with pytest.raises(ValueError, match="the store holds 4"):
        store.get_batch_tokens(1)
    store.reset_input_dataset()
    assert torch.equal(store.get_batch_tokens(2), a)


@pytest.mark.parametrize("arch", ["topk", "tree"])
def test_saebench_gives_our_ce_and_kl(arch, tiny_model):
    """On the same contexts, SAEBench's CE with and without the SAE equal stage 02's (metrics.downstream_metrics) to
    float precision, and its KL within 2/T (it also averages the last position's prediction, which has no target);
    without the exclusion they would not (position 0 spliced too)."""
    model = tiny_model
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 101, (8, 24), generator=g)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    sae = build(arch, d_in=32, seed=1, **(dict(widths=[16, 32, 64], k=6) if arch == "tree" else dict(d_sae=64, k=6)))
    sae.init_from_sample(cache[HOOK][:, 1:].reshape(-1, 32))
    sae.eval()
    ours = metrics.downstream_metrics(model, sae, tokens, HOOK, batch_size=4, exclude_first=True)
    store = saebench.TokenStore(tokens, saebench.excluded_positions(model, tokens, HOOK, None), 4)
    got = saebench.evaluate(model, sae, store, HOOK, hierarchical=arch == "tree")
    assert got["ce_clean"] == pytest.approx(ours["ce_clean"], rel=1e-5)
    assert got["ce_sae"] == pytest.approx(ours["ce_sae"], rel=1e-5)
    assert got["kl_div_with_sae"] == pytest.approx(ours["kl_sae"], rel=2 / tokens.shape[1])
    assert abs(got["ce_sae"] - got["ce_clean"]) > 1e-3  # the splice changed something
    everything = saebench.TokenStore(tokens, torch.zeros_like(tokens, dtype=torch.bool), 4)
    assert saebench.evaluate(model, sae, everything, HOOK, hierarchical=arch == "tree")["ce_sae"] != pytest.approx(
        ours["ce_sae"], rel=1e-3)
