"""SAEBench's core evaluation (``sae_bench.evals.core.main.run_evals``, sae-bench 0.6.0) on the project's SAEs,
offline, with the project's model object and held-out contexts.

SAEBench normally loads the model by name (``HookedTransformer.from_pretrained_no_processing``, which does not know
the offline SmolLM2) and streams a dataset from the hub. Here its core eval gets what it asks of an
``ActivationsStore`` from ``TokenStore``: the held-out contexts stage 02 evaluates on, in a fixed order. Our contexts
carry no BOS token, so position 0 (an attention sink) cannot be excluded by token id; ``Excluded`` is an entry of
SAEBench's ``ignore_tokens`` that matches positions instead: position 0 and every attention sink (norm above
``train.sink_ratio`` x the median), the tokens the project trains and scores without. With
``exclude_special_tokens_from_reconstruction`` they keep their clean activation when the SAE is spliced in, as in
``treesae.metrics.splice_hook``; SAEBench's zero ablation still ablates them, so its CE loss score is not ours (its
CE with and without the SAE are, to float precision; its KL also averages the last position's prediction, ~1/T
of the mean). sae-bench pins numpy<2 and datasets<4, which the lock cannot hold; its core eval
needs neither, so ``make setup`` installs the wheel (sha256-pinned) without dependencies into ``VENDOR``.
The DVC stage ``saebench`` (``treesae.stages.saebench``) runs it on one SAE per architecture.
"""
import sys
from pathlib import Path

import torch


VENDOR = Path(sys.prefix) / "vendor" / "sae-bench"  # in the running venv (make setup: requirements.vendor.txt)
METRICS = {("reconstruction_quality", "explained_variance_legacy"): "explained_variance_legacy",
           ("reconstruction_quality", "mse"): "mse", ("reconstruction_quality", "cossim"): "cossim",
           ("sparsity", "l0"): "l0", ("shrinkage", "l2_ratio"): "l2_ratio",
           ("model_performance_preservation", "ce_loss_with_sae"): "ce_sae",
           ("model_performance_preservation", "ce_loss_without_sae"): "ce_clean",
           ("model_performance_preservation", "ce_loss_score"): "ce_loss_score",
           ("model_behavior_preservation", "kl_div_with_sae"): "kl_div_with_sae",
           ("model_behavior_preservation", "kl_div_score"): "kl_div_score"}


def core():
    """SAEBench's core eval module, from ``VENDOR``."""
    if not (VENDOR / "sae_bench").is_dir():
        raise ModuleNotFoundError(f"SAEBench is not installed at {VENDOR}: run `make setup` (or pip install --no-deps "
                                  f"--require-hashes --target {VENDOR} -r requirements.vendor.txt)")
    if str(VENDOR) not in sys.path:
        sys.path.append(str(VENDOR))  # after the venv's packages: SAEBench never shadows a pinned one
    import sae_bench.evals.core.main as main  # noqa: PLC0415
    return main


class TokenStore:
    """What ``run_evals`` uses of sae-lens' ActivationsStore: contexts in order (``get_batch_tokens``, restarted by
    ``reset_input_dataset``), ``context_size`` and ``store_batch_size_prompts``; ``excluded`` [n_ctx, T] bool marks
    the positions the project leaves out (``Excluded``)."""

    def __init__(self, tokens: torch.Tensor, excluded: torch.Tensor, batch_size: int):
        self.tokens, self.excluded = tokens.long(), excluded.bool()
        self.context_size, self.store_batch_size_prompts = int(tokens.shape[1]), int(batch_size)
        self.i, self.last = 0, None

    def get_batch_tokens(self, n: int | None = None) -> torch.Tensor:
        n = n or self.store_batch_size_prompts
        if self.i + n > len(self.tokens):
            raise ValueError(f"SAEBench asked for {self.i + n} contexts, the store holds {len(self.tokens)}: lower "
                             "n_eval_*_batches or batch_size_prompts, or raise the contexts")
        self.last = slice(self.i, self.i + n)
        self.i += n
        return self.tokens[self.last]

    def reset_input_dataset(self) -> None:
        self.i = 0


class Excluded:
    """``batch == Excluded(store)`` is the excluded-position mask of the batch ``store`` handed out last (torch
    returns NotImplemented for an unknown operand, so Python asks this object)."""

    def __init__(self, store: TokenStore):
        self.store = store

    def __eq__(self, batch):
        if self.store.last is None or not torch.equal(batch, self.store.tokens[self.store.last]):
            raise RuntimeError("Excluded: compared with tokens that are not the store's last batch")
        return self.store.excluded[self.store.last]

    __hash__ = object.__hash__


@torch.no_grad()
def excluded_positions(model, tokens: torch.Tensor, hook_name: str, sink_ratio: float | None, batch_size: int = 8):
    """[n_ctx, T] bool: position 0 and, with ``sink_ratio``, the attention sinks at ``hook_name``
    (``treesae.cache.sink_mask`` of the residual there)."""
    from .cache import sink_mask  # noqa: PLC0415
    out = torch.zeros(tokens.shape, dtype=torch.bool)
    out[:, 0] = True
    if sink_ratio is not None:
        layer = int(hook_name.split(".")[1])
        for i in range(0, len(tokens), batch_size):
            _, cache = model.run_with_cache(tokens[i:i + batch_size], names_filter=hook_name, stop_at_layer=layer + 1)
            out[i:i + batch_size, 1:] |= sink_mask(cache[hook_name][:, 1:].float(), sink_ratio)
    return out


def evaluate(model, sae, store: TokenStore, hook_name: str, hierarchical: bool = False) -> dict:
    """SAEBench's core metrics (``METRICS``) of one of our SAEs on ``store``'s contexts: every context once for the
    reconstruction and once for the sparsity / variance metrics. Weight-based metrics (cosine between latents)
    are off for the TreeSAE variants, whose decoders are not one row per latent of one level."""
    from .saes.export import to_sae_lens  # noqa: PLC0415
    m = core()
    sl = to_sae_lens(sae.eval(), metadata=dict(hook_name=hook_name, model_name=model.cfg.model_name)).eval()
    _, sl, _ = m.general_utils.load_and_format_sae("project", sl, str(sl.device))  # SAEBench's own cfg checks
    cfg = m.CoreEvalConfig(model_name="project", batch_size_prompts=store.store_batch_size_prompts,
                           n_eval_reconstruction_batches=len(store.tokens) // store.store_batch_size_prompts,
                           n_eval_sparsity_variance_batches=len(store.tokens) // store.store_batch_size_prompts,
                           compute_kl=True, compute_ce_loss=True, compute_l2_norms=True, compute_sparsity_metrics=True,
                           compute_variance_metrics=True, compute_featurewise_density_statistics=True,
                           compute_featurewise_weight_based_metrics=not hierarchical,
                           exclude_special_tokens_from_reconstruction=True)
    store.reset_input_dataset()
    metrics, _ = m.run_evals(sl, store, model, cfg, ignore_tokens={Excluded(store)})
    return {name: float(metrics[group][key]) for (group, key), name in METRICS.items()}
