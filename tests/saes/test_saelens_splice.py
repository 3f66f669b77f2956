"""Every architecture, exported, loaded by sae-lens and spliced by its HookedSAETransformer into the real model,
gives the logits of our own splice; and the README's recipe (splice_hook on the sae-lens SAE) keeps position 0
and attention sinks clean as the SAEs were trained."""
import pytest
import torch
from sae_lens import SAE, HookedSAETransformer

from treesae.metrics import splice_hook
from treesae.saes import ARCHITECTURES, build, save_sae

HOOK = "blocks.6.hook_resid_pre"
SIZES = {"stacked": dict(widths=[16, 32, 64], k=6), "residual": dict(widths=[16, 32, 64], k=6),
         "tree": dict(widths=[16, 32, 64], k=6), "relu": dict(d_sae=96)}


@pytest.fixture(scope="module")
def models(real_model):
    hst = HookedSAETransformer(real_model.cfg, tokenizer=real_model.tokenizer, move_to_device=False)
    hst.load_state_dict(real_model.state_dict())
    tokens = real_model.to_tokens(["The cat sat on the mat because it was warm and the sun was out.",
                                   "import numpy as np\nx = np.zeros((3, 4)) + 1"], prepend_bos=False)[:, :12]
    _, cache = real_model.run_with_cache(tokens, names_filter=HOOK)
    return real_model, hst.eval(), tokens, cache[HOOK]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_hooked_sae_transformer_splices_like_we_do(arch, models, tmp_path):
    model, hst, tokens, acts = models
    sae = build(arch, d_in=model.cfg.d_model, seed=3, **SIZES.get(arch, dict(d_sae=96, k=6)))
    sae.init_from_sample(acts[:, 1:].reshape(-1, acts.shape[-1]))
    sae.eval()
    save_sae(sae, tmp_path, metadata={"hook_name": HOOK})
    sl = SAE.load_from_disk(tmp_path)
    with torch.no_grad():
        ours = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice_hook(sae, exclude_first=False))])
        theirs = hst.run_with_saes(tokens, saes=[sl])
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
        clean = model(tokens)
        assert (theirs - clean).abs().max() > 1e-2  # the splice changed something
        # the recipe for SAEs trained without position 0: position 0's logits stay clean, the rest follow ours
        recipe = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice_hook(sl, exclude_first=True))])
        torch.testing.assert_close(recipe[:, 0], clean[:, 0], rtol=1e-5, atol=1e-5)
        ours_recipe = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice_hook(sae, exclude_first=True))])
        torch.testing.assert_close(recipe, ours_recipe, rtol=1e-4, atol=1e-4)
