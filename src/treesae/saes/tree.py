"""Tree TreeSAE (gated): every latent below level 0 may have a parent latent, and then fires only with it.

Levels (notation of ``treesae.saes.hierarchical``): widths w_l = w_0 * b**l (b = ``branching``; with
``size``, w_0 = size // (1 + b + ... + b**(L-1)), so ``d_sae`` may fall a little short), every level reads
the input, a_l = (x - b_dec) @ W_l + b_l, one decoder over the concatenated codes, and every level's
cumulative reconstruction x_hat_l = b_dec + sum_{m<=l} z_m @ W_dec[level m] is trained to reconstruct x
(``level_loss="cumulative"``, as Matryoshka's prefixes). Two switches define the variant.

``parent_rule`` (who is whose parent; ``parent_of``: -1 = none):
* ``"learned"`` (default): a latent of level l >= 1 hangs from any latent of a level < l or from an
  always-active root (ungated). All start at the root; every ``adopt_every`` steps a root child c that
  fired at least ``adopt_min_count`` times since the last round adopts

      p* = argmax_p P(c fires | p fires)   over the p with P(p fires | c fires) >= adopt_coverage

  (the most specific latent that covers its firing), counted on the training batches' codes. A child
  that did not fire in a round returns to the root (AuxK can revive it there); otherwise adoption sticks.
* ``"fixed"``: child j of level l+1 has parent floor(j / b) of level l.

``budget`` (how many fire). Scores cap each child just below its parent (root children: no cap),

      s_c = a_c (level 0, root children),   s_c = min(a_c, nextafter(s_parent(c), -inf)) otherwise,

and z = ReLU(a) on the chosen entries with s > 0. A child's score is strictly below its parent's, so any
cut on s that keeps a child keeps its parent (whose a >= s > 0): the tree holds by construction.
* ``"batch"`` (default): the k * B largest scores of the batch (BatchTopK, k = sum of ``level_ks``); at
  inference s > theta, theta estimated as BatchTopK's and set by ``calibrate_threshold`` so that L0 is k.
* ``"global"``: the k largest scores per token.
* ``"level"``: level l keeps its own top-k_l among the latents whose parent fires (with ``"fixed"``,
  ``k_l <= b * k_{l-1}`` is required: only the b children of the k_{l-1} active parents are candidates).

``parent_loss_coef`` (default 0: off) trains the hierarchy into the encoder rather than only the gate: a child whose
ungated score would fire (a_c above the budget's threshold; 0 for the per-token budgets) on a token where its
parent did not fire pays coef * (a_c - theta)^2 / sum ||x||^2 (nMSE units), so with the gate lifted
(``encode_ungated``) children fire inside their parents. Root children pay nothing. ``parent_align_coef``
(default 0) is a structural constraint in the spirit of HSAE: coef * mean over children with a parent of
1 - cos(W_dec[c], W_dec[parent(c)]), pulling each child's direction toward its parent's.

AuxK ranks dead latents by their ungated pre-activations, so a dead child of a dead parent still gets a
gradient. Encoder init: tied to the decoder rows. The original design is ``parent_rule="fixed",
budget="level"``; docs/LOG.md measures each switch on the ground-truth world.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .batchtopk import kth_largest_positive, threshold_select, update_running_threshold
from .hierarchical import (HierarchicalConfig, HierarchicalSAE, HierarchicalSL, HierarchicalSLConfig, LevelOut,
                           LevelsMixin, linear_columns, register_sae_lens)
from .sparse import Codes, batch_topk_select, fixed_rows, row_offsets, topk_select


BUDGETS = ("level", "global", "batch")


@dataclass(kw_only=True)
class TreeConfig(HierarchicalConfig):
    """branching: width ratio of consecutive levels (children per parent with the fixed rule); parent_rule,
    adopt_*, budget, threshold_lr: see the module docstring."""

    architecture: ClassVar[str] = "tree"

    branching: int = 2
    parent_rule: str = "learned"
    adopt_every: int = 50
    adopt_coverage: float = 0.8
    adopt_min_count: int = 20
    budget: str = "batch"
    threshold_lr: float = 0.01
    parent_loss_coef: float = 0.0
    parent_align_coef: float = 0.0

    def __post_init__(self):
        for f in ("parent_loss_coef", "parent_align_coef"):
            self._check(getattr(self, f) >= 0, f"{f} must be >= 0, got {getattr(self, f)}")
        self._check(self.budget in BUDGETS, f"budget must be one of {', '.join(BUDGETS)}; got {self.budget!r}")
        self._check(0 < self.threshold_lr <= 1, f"threshold_lr must be in (0, 1], got {self.threshold_lr}")
        self._check_int("branching", self.branching)
        self._check(self.parent_rule in ("fixed", "learned"),
                    f"parent_rule must be 'fixed' or 'learned', got {self.parent_rule!r}")
        self._check_int("adopt_every", self.adopt_every)
        self._check_int("adopt_min_count", self.adopt_min_count)
        self._check(0 < self.adopt_coverage <= 1, f"adopt_coverage must be in (0, 1], got {self.adopt_coverage}")
        fixed = self.parent_rule == "fixed"
        if fixed and self.widths is not None:
            ok = all(b == a * self.branching for a, b in zip(self.widths, self.widths[1:]))
            self._check(ok, f"widths {list(self.widths)} must grow by exactly branching={self.branching} per level")
        super().__post_init__()
        for l in range(1, len(self._ks)) if fixed and self.budget == "level" else ():
            self._check(self._ks[l] <= self.branching * self._ks[l - 1],
                        f"level {l}: k={self._ks[l]} exceeds branching * k of level {l - 1} "
                        f"({self.branching} * {self._ks[l - 1]}), the most children that can be active")

    def _split(self, size, n_levels):
        w0 = size // sum(self.branching ** l for l in range(n_levels))
        self._check(w0 >= 1, f"size={size} is too small for {n_levels} levels with branching {self.branching}")
        return [w0 * self.branching ** l for l in range(n_levels)]


@torch.no_grad()
def gated_select(pre: Tensor, parent: Codes, branching: int, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row top-k among the children of active parents: (rows, cols, offsets, allowed).

    ``parent`` has a fixed number of entries per row; ``allowed`` is False for entries picked only
    to fill k when fewer candidates exist (their values are masked to zero by the caller).
    """
    B = pre.shape[0]
    kp = parent.cols.numel() // B
    kids = torch.arange(branching, device=pre.device)
    cand = (parent.cols.view(B, kp, 1) * branching + kids).view(B, kp * branching)
    active = (parent.vals.detach() > 0).view(B, kp).repeat_interleave(branching, dim=1)
    scores = pre.gather(1, cand).masked_fill(~active, float("-inf"))
    top = scores.topk(min(k, kp * branching), dim=1, sorted=False)
    rows, offsets = fixed_rows(B, top.indices.shape[1], pre.device)
    return rows, cand.gather(1, top.indices).view(-1), offsets, active.gather(1, top.indices).view(-1)


@torch.no_grad()
def fired_dense(outs: list[LevelOut], offsets: list[int], n_cols: int) -> Tensor:
    """bool [B, n_cols]: which latents of the concatenated levels fired (one extra column, always True,
    when ``n_cols`` exceeds the levels' total: the root)."""
    B = outs[0].codes.shape[0]
    out = torch.zeros(B, n_cols, dtype=torch.bool, device=outs[0].codes.vals.device)
    out[:, sum(o.codes.shape[1] for o in outs):] = True
    for o, off in zip(outs, offsets):
        out[o.codes.rows, o.codes.cols + off] = o.codes.vals.detach() > 0
    return out


class TreeCore(LevelsMixin):
    branching: int
    parent_rule: str = "fixed"
    budget: str = "level"
    parent_index: Tensor  # learned rule: parent of every latent in the concatenated space, -1 = root

    batch_training: bool = True  # budget "batch": select over the batch in training mode (the sae-lens class never does)
    threshold: Tensor

    def _levels(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        return self._levels_per_level(x, shift) if self.budget == "level" else self._levels_global(x, shift)

    @torch.no_grad()
    def _scores(self, lins: list[Tensor]) -> Tensor:
        """[B, d_sae] pre-activations, each capped just below its parent's capped score (root: no cap)."""
        par = self._parents(lins[0].device)
        s = torch.cat([lin.detach() for lin in lins], 1)
        below = s.new_tensor(float("-inf"))
        for o, w in zip(self.level_offsets[1:], self.level_widths[1:]):  # coarser levels first: parents are capped
            kids = (par[o:o + w] >= 0).nonzero().squeeze(1)  # a root's children keep their scores
            if len(kids):
                cap = torch.nextafter(s.index_select(1, par[o + kids]), below)
                cols = kids + o
                s.index_copy_(1, cols, torch.minimum(s.index_select(1, cols), cap, out=cap))
        return s

    def _levels_global(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        kn, B, K = self.kernels, x.shape[0], sum(self.level_ks)
        lins = [kn.linear(x, shift, enc.W_enc, enc.b_enc) for enc in self.encoders]
        with torch.no_grad():
            s = self._scores(lins)
            if self.budget == "global":
                rows, cols, _ = topk_select(s, K)
            elif self.training and self.batch_training:
                rows, cols, _ = batch_topk_select(s, K * B)
            else:
                rows, cols, _ = threshold_select(s, self.threshold)
            live = s[rows, cols] > 0
            self._kept_min = s[rows, cols].min() if self.budget == "batch" and rows.numel() else None
        outs = []
        for enc, lin, o, w in zip(self.encoders, lins, self.level_offsets, self.level_widths):
            keep = (cols >= o) & (cols < o + w)
            r, c = rows[keep], cols[keep] - o
            value_at = partial(kn.gather, lin, x, shift, enc.W_enc, enc.b_enc)
            vals = value_at(r, c).relu() * live[keep]
            outs.append(LevelOut(Codes(vals, r, c, row_offsets(r, B), (B, w)), lin, value_at,
                                 linear_columns(x, shift, enc)))
        return outs

    def _levels_per_level(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        kn, outs = self.kernels, []
        for l, (enc, w, k) in enumerate(zip(self.encoders, self.level_widths, self.level_ks)):
            lin = kn.linear(x, shift, enc.W_enc, enc.b_enc)
            value_at = partial(kn.gather, lin, x, shift, enc.W_enc, enc.b_enc)
            if l == 0:
                rows, cols, offsets = topk_select(lin.detach(), k)
                vals = value_at(rows, cols).relu()
            elif self.parent_rule == "fixed":
                rows, cols, offsets, allowed = gated_select(lin.detach(), outs[-1].codes, self.branching, k)
                vals = value_at(rows, cols).relu() * allowed
            else:
                o = self.level_offsets[l]
                par = self._parents()[o:o + w]
                # column o of fired is the root: always True
                mask = fired_dense(outs, self.level_offsets, o + 1)[:, torch.where(par < 0, o, par)]
                rows, cols, offsets = topk_select(lin.detach().masked_fill(~mask, float("-inf")), k)
                vals = value_at(rows, cols).relu() * mask[rows, cols]
            outs.append(LevelOut(Codes(vals, rows, cols, offsets, (x.shape[0], w)), lin, value_at,
                                 linear_columns(x, shift, enc)))
        return outs

    @torch.no_grad()
    def encode_ungated(self, x: Tensor) -> Tensor:
        """Dense codes [B, d_sae] with the gate lifted: every latent's own pre-activation against the same budget
        (batch: the inference threshold; global: the k largest per token; level: each level's k_l), no parent's
        cap. What the encoder learned rather than what the gate enforces; a flat SAE's codes are their own."""
        x, shift = (self._prep(x), self.b_dec) if hasattr(self, "_prep") else (self.process_sae_in(x), None)  # ours / sae-lens'
        s = torch.cat([self.kernels.linear(x, shift, e.W_enc, e.b_enc) for e in self.encoders], 1)
        if self.budget == "batch":
            keep = s > self.threshold
        else:
            keep = torch.zeros_like(s, dtype=torch.bool)
            spans = [(0, s.shape[1], sum(self.level_ks))] if self.budget == "global" else \
                list(zip(self.level_offsets, self.level_widths, self.level_ks))
            for o, w, k in spans:
                keep[:, o:o + w].scatter_(1, s[:, o:o + w].topk(k, dim=1).indices, True)
        return s.relu() * keep

    def _parents(self, device=None) -> Tensor:
        """Parent of every latent (-1: none) on ``device``; the learned rule's buffer as it is (no copy)."""
        if self.parent_rule == "learned":
            return self.parent_index.long()  # sae-lens' loader casts buffers to the SAE's dtype
        parts = [torch.full((self.level_widths[0],), -1, dtype=torch.long, device=device)]
        for l in range(1, len(self.level_widths)):
            parts.append(self.level_offsets[l - 1] + torch.arange(self.level_widths[l], device=device) // self.branching)
        return torch.cat(parts)

    def _parent_of(self) -> Tensor:
        return self._parents().detach().cpu().clone()


@dataclass
class TreeSLConfig(HierarchicalSLConfig):
    branching: int = 2
    parent_rule: str = "fixed"
    budget: str = "level"

    @classmethod
    def architecture(cls) -> str:
        return "treesae_tree"


class TreeSL(TreeCore, HierarchicalSL):
    """Carries ``threshold`` (budget "batch") and ``parent_index`` (learned parents) as buffers."""

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.batch_training = False
        if self.budget == "batch":
            self.register_buffer("threshold", torch.zeros((), dtype=self.dtype, device=self.device))
        if self.parent_rule == "learned":
            self.register_buffer("parent_index", torch.full((self.cfg.d_sae,), -1, dtype=torch.long, device=self.device))

    @property
    def parent_of(self) -> Tensor:
        return self._parent_of()


register_sae_lens(TreeSL, TreeSLConfig)


class TreeSAE(TreeCore, HierarchicalSAE):
    """Learned rule: buffers ``parent_index`` [d_sae] and, for adoption (training only), ``cofire``
    [children, parents] (tokens of the batches since the last round where child c and coarser latent p both
    fired; c from level 1 on, p above the last level), ``fire_count`` and ``adopt_steps``."""

    config_class: ClassVar[type] = TreeConfig
    cfg: TreeConfig
    sae_lens_classes = (TreeSL, TreeSLConfig)
    training_only = ("threshold_updates", "cofire", "fire_count", "adopt_steps")
    token_counts = ("cofire", "fire_count")

    def __init__(self, cfg: TreeConfig):
        self.branching, self.parent_rule, self.budget = cfg.branching, cfg.parent_rule, cfg.budget
        super().__init__(cfg)
        if self.parent_rule == "learned":
            n = self.n_latents
            self.register_buffer("parent_index", torch.full((n,), -1, dtype=torch.long))
            # rows: latents of levels >= 1 (children); columns: latents of the levels above the last (parents)
            self.register_buffer("cofire", torch.zeros(n - self.level_offsets[1], self.level_offsets[-1], dtype=torch.int32))
            self.register_buffer("fire_count", torch.zeros(n, dtype=torch.long))
            self.register_buffer("adopt_steps", torch.zeros((), dtype=torch.long))
        if self.budget == "batch":
            self.register_buffer("threshold", torch.zeros(()))
            self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    @property
    def parent_of(self) -> Tensor:
        return self._parent_of()

    @torch.no_grad()
    def _observe(self, outs: list[LevelOut]) -> None:
        if self.budget == "batch" and self.training and self._kept_min is not None:
            update_running_threshold(self.threshold, self.threshold_updates, self._kept_min, self.cfg.threshold_lr)
        if self.parent_rule != "learned" or not self.training:
            return
        o, last, B = self.level_offsets[1], self.level_offsets[-1], outs[0].codes.shape[0]
        on = [out.codes.vals.detach() > 0 for out in outs]
        rows = torch.cat([out.codes.rows[m] for out, m in zip(outs, on)])  # every (token, latent) that fired
        cols = torch.cat([out.codes.cols[m] + off for out, m, off in zip(outs, on, self.level_offsets)])
        self.fire_count += torch.bincount(cols, minlength=self.n_latents)
        # cofire += F_children^T F_coarser with F the batch's 0/1 firing matrix: child c's row is the sum of the
        # coarser rows of F over the tokens where c fired (one bag per child), so the cost is (children that fired)
        # x (coarser latents), not B x children x coarser; sums of ones below 2^24, so exact in float32
        up = cols < last
        coarser = torch.zeros(B, last, device=cols.device)
        coarser[rows[up], cols[up]] = 1.0
        kid = cols >= o
        c = cols[kid] - o
        n_bag = torch.bincount(c, minlength=self.n_latents - o)
        bags = rows[kid][c.argsort()]
        self.cofire += F.embedding_bag(bags, coarser, n_bag.cumsum(0) - n_bag, mode="sum").to(self.cofire.dtype)

    def _structure_loss(self, x: Tensor, outs: list[LevelOut]) -> Tensor | None:
        """``parent_loss_coef``: children whose ungated score clears the threshold where their parent did not fire;
        ``parent_align_coef``: children's decoder directions away from their parents'."""
        cfg = self.cfg
        if not (cfg.parent_loss_coef or cfg.parent_align_coef):
            return None
        loss = x.new_zeros(())
        par = self._parents(x.device)
        if cfg.parent_loss_coef:
            theta = (self.threshold if self.budget == "batch" else x.new_zeros(())).detach()
            pen = x.new_zeros(())
            with torch.no_grad():
                fired = fired_dense(outs, self.level_offsets, self.n_latents + 1)  # the last column: the root, always on
            for l in range(1, len(outs)):
                o, w = self.level_offsets[l], self.level_widths[l]
                with torch.no_grad():
                    p = par[o:o + w]
                    bad = (outs[l].pre > theta) & ~fired[:, torch.where(p < 0, self.n_latents, p)]
                    rows, cols = bad.nonzero(as_tuple=True)
                if rows.numel():
                    pen = pen + (outs[l].value_at(rows, cols) - theta).pow(2).sum()
            loss = loss + cfg.parent_loss_coef * pen / x.pow(2).sum().clamp_min(1e-12)
        kids = (par >= 0).nonzero().squeeze(1)
        if cfg.parent_align_coef and kids.numel():
            cos = F.cosine_similarity(self.W_dec[kids], self.W_dec[par[kids]], dim=1)
            loss = loss + cfg.parent_align_coef * (1 - cos).mean()
        return loss

    @torch.no_grad()
    def calibrate_threshold(self, x: Tensor, batch_size: int = 4096) -> None:
        """Budget "batch": theta such that L0 on ``x`` (training activations) is k, the (k N)-th largest
        positive score over its N tokens (as ``BatchTopKSAE.calibrate_threshold``). Other budgets: nothing."""
        if self.budget != "batch":
            return
        x = self._prep(x)
        scores = (self._scores([self.kernels.linear(x[i:i + batch_size], self.b_dec, e.W_enc, e.b_enc)
                                for e in self.encoders]).flatten() for i in range(0, len(x), batch_size))
        self.threshold.fill_(kth_largest_positive(scores, sum(self.level_ks) * len(x)))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.parent_rule != "learned" or not self.training:
            return
        self.adopt_steps += 1
        if int(self.adopt_steps) % self.cfg.adopt_every == 0:
            self.adopt()

    @torch.no_grad()
    def adopt(self) -> None:
        """One adoption round over the counts since the last one (see the module docstring); resets them."""
        cfg, n, par = self.cfg, self.fire_count, self.parent_index
        for l in range(1, len(self.level_widths)):
            o, w = self.level_offsets[l], self.level_widths[l]
            kids = torch.arange(o, o + w, device=par.device)
            co = self.cofire[kids - self.level_offsets[1], :o].double()
            cover = co / n[kids, None].clamp_min(1)               # P(p fires | c fires)
            specific = co / n[None, :o].clamp_min(1)              # P(c fires | p fires)
            best = specific.masked_fill(cover < cfg.adopt_coverage, -1).max(1)
            free = (par[kids] < 0) & (n[kids] >= cfg.adopt_min_count) & (best.values >= 0)
            par[kids[free]] = best.indices[free]
            par[kids[n[kids] == 0]] = -1
        self.cofire.zero_()
        self.fire_count.zero_()
