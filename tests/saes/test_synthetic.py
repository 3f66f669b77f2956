import pytest
import torch
from synthetic import planted_dictionary


def codes_of(X, dirs):
    return X.double() @ torch.linalg.pinv(dirs.double())  # exact when n_features <= d_in


def test_flat_planted_dictionary():
    X, dirs, parent_of = planted_dictionary(d_in=40, n_features=30, k=3, n_samples=500, seed=1)
    assert X.shape == (500, 40) and X.dtype == torch.float32 and dirs.shape == (30, 40) and parent_of is None
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(30))
    c = codes_of(X, dirs)
    active = c.abs() > 1e-3
    assert (active.sum(1) == 3).all()
    assert c[active].min() > 0.49 and c[active].max() < 1.51
    X2, dirs2, _ = planted_dictionary(d_in=40, n_features=30, k=3, n_samples=500, seed=1)
    assert torch.equal(X, X2) and torch.equal(dirs, dirs2)


def test_hierarchy_children_fire_only_with_parents():
    X, dirs, parent_of = planted_dictionary(d_in=64, n_features=24, k=4, n_samples=800, seed=0,
                                            hierarchy=(8, 2), child_parent_cos=0.5)
    assert parent_of.tolist() == [-1] * 8 + [p for p in range(8) for _ in range(2)]
    torch.testing.assert_close((dirs[8:] * dirs[parent_of[8:]]).sum(1), torch.full((16,), 0.5))
    active = codes_of(X, dirs).abs() > 1e-3
    assert (active[:, :8].sum(1) == 2).all() and (active[:, 8:].sum(1) == 2).all()
    children = torch.arange(8, 24)
    assert not (active[:, children] & ~active[:, parent_of[children]]).any()
    assert active[:, 8:].any(0).all()  # every child occurs


def test_child_prob_lets_parents_fire_alone():
    X, dirs, parent_of = planted_dictionary(d_in=64, n_features=24, k=4, n_samples=2000, seed=0,
                                            hierarchy=(8, 2), child_prob=0.5)
    active = codes_of(X, dirs).abs() > 1e-3
    assert (active[:, :8].sum(1) == 2).all()
    n_children = active[:, 8:].sum(1).float()
    assert 0.9 < n_children.mean() < 1.1 and n_children.min() == 0 and n_children.max() == 2
    children = torch.arange(8, 24)
    assert not (active[:, children] & ~active[:, parent_of[children]]).any()


@pytest.mark.parametrize("kw, msg", [(dict(n_features=20, hierarchy=(8, 2)), "needs n_features = 8"),
                                     (dict(n_features=24, hierarchy=(8, 2), k=3), "must be even"),
                                     (dict(n_features=24, k=0), "k=0 must be in"),
                                     (dict(n_features=24, child_prob=1.5), "child_prob=1.5 must be in")])
def test_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        planted_dictionary(**({"d_in": 16, "k": 2, "n_samples": 10} | kw))
