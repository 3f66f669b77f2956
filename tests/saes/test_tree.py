import pytest
import torch

from treesae.saes import TreeConfig, build


def test_widths_and_rounding():
    cfg = TreeConfig(d_in=8, size=4608, k=32, branching=2)
    assert cfg.level_widths == [658, 1316, 2632] and cfg.d_sae == 4606  # 4608 // 7 * (1 + 2 + 4)
    assert TreeConfig(d_in=8, size=84, n_levels=2, branching=3, k=2).level_widths == [21, 63]


FIXED = dict(parent_rule="fixed", budget="level")  # the original design


@pytest.mark.parametrize("kw, msg", [
    (dict(widths=[10, 25], **FIXED), r"widths \[10, 25\] must grow by exactly branching=2 per level"),
    (dict(widths=[10, 20], ks=[2, 5], **FIXED), r"level 1: k=5 exceeds branching \* k of level 0 \(2 \* 2\)"),
    (dict(size=5, n_levels=3), "too small"),
    (dict(size=70, branching=0), "branching must be an integer >= 1"),
    (dict(size=70, parent_rule="random"), "parent_rule must be 'fixed' or 'learned'"),
    (dict(size=70, budget="token"), "budget must be one of level, global, batch"),
    (dict(size=70, adopt_coverage=0.0), r"adopt_coverage must be in \(0, 1\]"),
])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TreeConfig(d_in=8, **({"k": 2} | kw))


def test_learned_rule_and_other_budgets_lift_the_fixed_constraints():
    TreeConfig(d_in=8, widths=[10, 25], ks=[1, 5])  # learned rule: any widths, any split of k
    TreeConfig(d_in=8, widths=[10, 20], ks=[2, 5], parent_rule="fixed", budget="global")


def test_parent_of():
    assert (build("tree", d_in=8, widths=[3, 6, 12], k=2).parent_of == -1).all()  # learned: all start at the root
    sae = build("tree", d_in=8, widths=[3, 6, 12], k=2, **FIXED)
    p = sae.parent_of
    assert p.shape == (21,) and (p[:3] == -1).all()
    assert p[3:9].tolist() == [0, 0, 1, 1, 2, 2]
    assert p[9:].tolist() == [3 + j // 2 for j in range(12)]
    assert build("topk", d_in=8, d_sae=8, k=2).parent_of is None


@pytest.mark.parametrize("sparse", [True, False])
def test_children_fire_only_with_their_parent(sparse, x_small):
    sae = build("tree", d_in=12, widths=[4, 8, 16], ks=[2, 3, 4], sparse=sparse, **FIXED)
    with torch.no_grad():  # make many children want to fire
        for enc in sae.encoders[1:]:
            enc.b_enc.add_(1.0)
    z = sae.encode(x_small)
    p = sae.parent_of
    child = torch.arange(4, 28)
    active_child = z[:, child] > 0
    assert active_child.any()
    assert not (active_child & ~(z[:, p[child]] > 0)).any()
    for l, (sl, k) in enumerate(zip(sae.levels, [2, 3, 4])):
        assert ((z[:, sl] > 0).sum(1) <= k).all()
    # children are the top-k among the children of active parents
    pre = (x_small - sae.b_dec) @ sae.encoders[1].W_enc + sae.encoders[1].b_enc
    allowed = (z[:, :4] > 0).repeat_interleave(2, dim=1)
    masked = pre.masked_fill(~allowed, float("-inf"))
    top = masked.topk(3)
    ref = torch.zeros_like(pre).scatter_(1, top.indices, top.values.clamp_min(0))
    torch.testing.assert_close(z[:, 4:12], ref.detach())


def planted_tree(**kw):
    """A learned-rule tree with a planted parent_index: level-1 latents 4..11 under 0..3 (two each) except 11
    (root), level-2 latents 12..27 under level 1 (two each) except 26, 27 (under level 0's latent 1, root)."""
    sae = build("tree", d_in=12, widths=[4, 8, 16], ks=[2, 3, 4], seed=3, **kw)
    par = [-1] * 4 + [0, 0, 1, 1, 2, 2, 3, -1] + [4 + j // 2 for j in range(14)] + [1, -1]
    sae.parent_index.copy_(torch.tensor(par))
    with torch.no_grad():  # make many children want to fire
        for enc in sae.encoders[1:]:
            enc.b_enc.add_(1.0)
    return sae


@pytest.mark.parametrize("budget", ["batch", "global", "level"])
@pytest.mark.parametrize("rule", ["learned", "fixed"])
def test_every_budget_keeps_the_tree(budget, rule, x_small):
    sae = planted_tree(budget=budget) if rule == "learned" else \
        build("tree", d_in=12, widths=[4, 8, 16], ks=[2, 3, 4], seed=3, parent_rule="fixed", budget=budget)
    p = sae.parent_of
    assert torch.equal(sae.parent_of, p) and p.dtype == torch.long
    for training in (True, False):
        sae.train(training)
        with torch.no_grad():
            z = sae.training_loss(x_small)[2] if training else sae.encode(x_small)
        gated = torch.nonzero(p >= 0).squeeze(1)
        fires = z > 0
        assert fires[:, gated].any()
        assert not (fires[:, gated] & ~fires[:, p[gated]]).any()  # a child fires only with its parent
        if budget == "global" or budget == "batch" and training:
            n = fires.sum(1)
            assert (n <= 9).all() if budget == "global" else n.sum() <= 9 * len(x_small)


def test_batch_budget_threshold_calibrates_l0(x_small):
    sae = planted_tree()
    sae.train()
    with torch.no_grad():
        for _ in range(3):
            sae.training_loss(x_small)
    assert sae.threshold > 0 and sae.threshold_updates == 3  # the running estimate moves in training
    sae.eval()
    sae.calibrate_threshold(x_small)
    with torch.no_grad():
        l0 = (sae.encode(x_small) > 0).sum(1).float().mean()
    assert l0 == pytest.approx(9, rel=0.05)  # k = sum(ks)


def test_adoption_picks_the_most_specific_covering_parent():
    sae = build("tree", d_in=8, widths=[3, 6], k=2, adopt_every=2, adopt_min_count=10, adopt_coverage=0.8)
    sae.train()
    sae.parent_index[[6, 7]] = torch.tensor([1, 2])  # already gated
    n = torch.tensor([1000, 200, 50, 100, 100, 5, 0, 100, 0])
    sae.fire_count.copy_(n)
    co = torch.zeros(6, 3, dtype=torch.int32)  # [children 3..8, parents 0..2]
    co[0] = torch.tensor([100, 100, 0])    # 3: covered by 0 and 1; 1 is the more specific -> adopts 1
    co[1] = torch.tensor([70, 0, 30])      # 4: coverage 0.7 < 0.8 -> stays at the root
    co[2] = torch.tensor([5, 0, 0])        # 5: fired too rarely (5 < 10) -> stays at the root
    co[4] = torch.tensor([100, 0, 0])      # 7: gated children keep their parent
    sae.cofire.copy_(co)
    sae.after_optimizer_step()
    assert sae.parent_index[3] == -1 and sae.fire_count.sum() > 0  # not yet: a round every 2 steps
    sae.after_optimizer_step()
    assert sae.parent_index.tolist() == [-1, -1, -1, 1, -1, -1, -1, 2, -1]  # 6 never fired: back to the root
    assert sae.cofire.sum() == 0 and sae.fire_count.sum() == 0


def test_adoption_counts_come_from_training_batches(x_small):
    sae = planted_tree()
    sae.parent_index[4:].fill_(-1)
    with torch.no_grad():
        z = sae.training_loss(x_small)[2]
        f = (z > 0).long()
    assert torch.equal(sae.fire_count, f.sum(0))
    assert sae.cofire.shape == (24, 12) and torch.equal(sae.cofire.long(), f[:, 4:].T @ f[:, :12])
    sae.eval()
    with torch.no_grad():
        sae.training_loss(x_small)
    assert torch.equal(sae.fire_count, f.sum(0))  # eval batches do not count


@pytest.mark.parametrize("kw", [FIXED, dict(budget="global"), dict()])
def test_sparse_and_dense_paths_agree(kw, sparse_vs_dense, x_small):
    dead = torch.zeros(28, dtype=torch.bool)
    dead[[1, 5, 6, 13, 20, 27]] = True
    _, logs, z, _ = sparse_vs_dense("tree", x_small, dead, d_in=12, widths=[4, 8, 16], ks=[2, 3, 4], k_aux=2, **kw)
    assert logs["level2/aux"] > 0
    assert logs["l0"] == sum(logs[f"level{l}/l0"] for l in range(3))


@pytest.mark.parametrize("budget", ["batch", "global", "level"])
def test_lifting_the_gate_keeps_every_gated_firing_and_frees_the_children(budget, x_small):
    """``encode_ungated``: the same budget on each latent's own pre-activation. Under the batch budget every
    latent the gate lets fire still fires with the same value, and children fire without their parents where the
    gate stopped them; with no parents at all, lifting the gate changes nothing."""
    sae = planted_tree(budget=budget).eval()
    sae.calibrate_threshold(x_small)
    with torch.no_grad():
        z, u = sae.encode(x_small), sae.encode_ungated(x_small)
    p = sae.parent_of
    gated = torch.nonzero(p >= 0).squeeze(1)
    if budget == "batch":
        assert torch.equal(u[z > 0], z[z > 0])
    assert (u[:, gated] > 0).logical_and(u[:, p[gated]] == 0).any()  # a child without its parent
    sae.parent_index.fill_(-1)
    with torch.no_grad():
        assert torch.equal(sae.encode_ungated(x_small), sae.encode(x_small))


def test_parent_loss_is_the_squared_excess_of_children_firing_outside_their_parents(x_small):
    """``parent_loss_coef``: off by default (no loss term, no log); on, it equals coef * sum over (token, child with
    a parent that did not fire, ungated score above the threshold) of (a_c - theta)^2 / sum ||x||^2, recomputed here
    from the dense pre-activations, and its gradient lowers exactly those children's scores."""
    off = planted_tree()
    off.train()
    loss_off, logs_off, _ = off.training_loss(x_small)
    assert "structure" not in logs_off
    sae = planted_tree(parent_loss_coef=2.0)
    sae.train()
    sae.threshold.fill_(0.3)
    loss, logs, z = sae.training_loss(x_small)
    theta = float(sae.threshold)  # the running estimate, as this batch moved it
    x = sae._prep(x_small)
    pre = torch.cat([(x - sae.b_dec) @ e.W_enc + e.b_enc for e in sae.encoders], 1).detach()
    p = sae.parent_of
    fired = torch.cat([z.detach() > 0, torch.ones(len(x), 1, dtype=torch.bool)], 1)
    par = torch.where(p < 0, len(p), p)
    bad = (pre > theta) & ~fired[:, par] & (p >= 0)
    assert bad.any() and 0 < theta
    want = 2.0 * ((pre - theta)[bad] ** 2).sum() / x.pow(2).sum()
    torch.testing.assert_close(logs["structure"], want)
    torch.testing.assert_close(loss.detach(), loss_off.detach() + want)  # same init, same codes: only the new term
    sae.zero_grad()
    sae._structure_loss(x, sae._levels(x, sae.b_dec)).backward()
    g = sae.encoders[1].b_enc.grad
    cols = bad[:, 4:12].any(0)
    assert (g[cols] > 0).all() and (g[~cols] == 0).all()  # descent lowers the offending children's scores only


@pytest.mark.parametrize("field", ["parent_loss_coef", "parent_align_coef"])
def test_structure_coefficients_are_validated(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        TreeConfig(d_in=8, widths=[3, 6], k=2, **{field: -1.0})


def test_parent_align_pulls_children_toward_their_parents_directions(x_small):
    sae = planted_tree(parent_align_coef=0.5)
    sae.train()
    _, logs, _ = sae.training_loss(x_small)
    p = sae.parent_of
    kids = (p >= 0).nonzero().squeeze(1)
    W = sae.W_dec.detach()
    want = 0.5 * (1 - torch.nn.functional.cosine_similarity(W[kids], W[p[kids]], dim=1)).mean()
    torch.testing.assert_close(logs["structure"], want)
    opt = torch.optim.SGD(sae.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        sae._structure_loss(sae._prep(x_small), sae._levels(sae._prep(x_small), sae.b_dec)).backward()
        opt.step()
    W = sae.W_dec.detach()
    after = (1 - torch.nn.functional.cosine_similarity(W[kids], W[p[kids]], dim=1)).mean()
    assert after < 0.7 * want / 0.5  # descent aligns them (want / 0.5: the misalignment before)
