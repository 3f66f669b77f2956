"""Bad parameters: every section is read as DVC reads it and checked before any stage does work, with a
message that names the section, key, bad value and what is allowed."""
import copy
import subprocess
import sys

import pytest

from treesae import config
from treesae.stages.validate import validate

GOOD = config.profile_params("smoke")


def with_(path: str, value, params=None):
    """A copy of the smoke params with ``a.b.c`` set to value (``DELETE`` removes the key)."""
    p = copy.deepcopy(params or GOOD)
    *parents, last = path.split(".")
    d = p
    for k in parents:
        d = d[k]
    if value is DELETE:
        del d[last]
    else:
        d[last] = value
    return p


DELETE = object()


def test_the_shipped_params_are_valid():
    validate(config.profile_params("default"))
    out = validate(GOOD)
    assert len(out["runs"]) > 2 and out["optim"].batch_size == GOOD["train"]["optim"]["batch_size"]


def test_yaml_is_read_as_dvc_reads_it():
    p = config.load_yaml("lr: 1e-3\nflag: yes\nn: 0x10\nx: .5\n")
    assert p == {"lr": 0.001, "flag": "yes", "n": 16, "x": 0.5}  # YAML 1.2: 1e-3 is a float, yes a string
    from dvc.utils.serialize import parse_yaml
    assert parse_yaml("lr: 1e-3\nflag: yes\n", "params.yaml") == {"lr": 0.001, "flag": "yes"}


def test_profile_round_trips(tmp_path):
    config.write_profile("smoke", tmp_path / "params.yaml")
    assert config.read_params(tmp_path) == dict(GOOD, profile="smoke")


@pytest.mark.parametrize("path, value, message", [
    ("train.optim.lr", "1e-3x", r"train\.optim\.lr must be a number, got '1e-3x' \(str\)"),
    ("train.optim.batch_size", 1024.5, r"train\.optim\.batch_size must be an integer, got 1024\.5"),
    ("train.drop_first", "yes", r"train\.drop_first must be true or false, got 'yes'"),
    ("train.eval.downstream_context", 4, r"unknown key\(s\) \['downstream_context'\] in train\.eval; known keys: heldout_tokens"),
    ("train.eval.heldout_tokens", 0, r"train\.eval needs heldout_tokens >= 1"),
    ("train.eval.heldout_tokens", 1, r"train\.eval\.heldout_tokens = 1 is out of range; allowed: null \(all\) or at least one context"),
    ("train.optim.lr", float("inf"), r"params\.train\.optim\.lr must be a finite number, got inf"),
    ("synthetic.lr", float("inf"), r"params\.synthetic\.lr must be a finite number, got inf"),
    ("train.sink_ratio", 0, r"train\.sink_ratio = 0 is out of range; allowed: null \(keep sinks\) or a ratio > 1"),
    ("train.sink_ratio", None, None),
    ("harvest.layers", [3, 9, 30], r"harvest\.layers = \[3, 9, 30\] is out of range; allowed: indices 0\.\.29: smollm2-135m has 30 blocks \(\[30\] do not exist\)"),
    ("train.architectures.treee", {"n_levels": 3}, r"train\.architectures names unknown architecture\(s\) \['treee'\]"),
    ("train.architectures.tree", {"n_level": 3}, r"run tree-.*TreeConfig has no field\(s\) \['n_level'\]"),
    ("train.grids.frontier.k", [], r"train\.grids\.frontier\.k must be a non-empty list"),
    ("train.grids.seed", {"seed": 1}, r"train\.grids\.seed\.seed must be a non-empty list"),
    ("train.base.layer", "9", r"train\.base\.layer must be an integer, got '9' \(str\)"),
    ("train.base.architecture", "topkk", r"unknown architecture 'topkk'"),
    ("train.base.corpus", "wiki", r"corpus 'wiki' is not harvested"),
    ("train.grids.layer.layer", [5], r"layer 5 is not harvested"),
    ("train.base.k", 0, r"train\.base\.k must be >= 1"),
    ("train.processes", 0, r"train\.processes must be >= 1, got 0"),
    ("synthetic.workers", 0, r"synthetic\.workers must be >= 1, got 0"),
    ("train.optim.batch_size", 0, r"^params\.yaml: train\.optim\.batch_size must be >= 1, got 0$"),
    ("train.optim.lr_end", 1.0, r"^params\.yaml: train\.optim: need lr > 0 and 0 <= lr_end <= lr"),
    ("train.optim.typo", 1, r"unknown key\(s\) \['typo'\] in train\.optim"),
    ("harvest.corpora", ["brown", "wikitext"], r"harvest\.corpora: unknown corpus 'wikitext'"),
    ("harvest.layers", ["3", 9], r"harvest\.layers must be a list of integers, got \['3', 9\]"),
    ("harvest.max_contexts", "all", r"harvest\.max_contexts must be an integer or null"),
    ("model.threads", 0, r"model\.threads must be >= 1"),
    ("position.corpus", "pydoc", r"position\.corpus names unknown corpus \(not harvested\) \['pydoc'\]"),
    ("hierarchy.architectures", ["tree", "Tree"], r"hierarchy\.architectures names unknown architecture\(s\) \['Tree'\]"),
    ("matching.factors", ["seed", "sparsity"], r"matching\.factors names unknown factor\(s\) \['sparsity'\]"),
    ("matching.factors", ["architecture", "k"], r"matching\.factors must include seed .*; add seed to the list"),
    ("matching.embedding_grids", ["base", "layers"], r"matching\.embedding_grids names unknown grid\(s\) \['layers'\]"),
    ("matching.threshold", "0.7", r"matching\.threshold must be a number"),
    ("matching.threshold", 0.75, r"matching\.threshold must be one of \[0\.5, 0\.6, 0\.7, 0\.8, 0\.9\]"),
    ("browser.window", [24], None),
    ("figures.fps", 2.5, r"figures\.fps must be an integer"),
    ("positon", {}, r"unknown section\(s\) \['positon'\]"),
    ("hierarchy", DELETE, r"lacks section\(s\) \['hierarchy'\]"),
    ("paper.experiments", "treesae", r"paper must be \{experiments: \[names\]\}"),
    ("paper.experiments", ["treesae", "treesae"], r"distinct names"),
    ("paper.experiments", ["treesae"], None),
])
def test_bad_parameter_is_named(path, value, message):
    if message is None:  # accepted: the value is valid
        validate(with_(path, value))
        return
    with pytest.raises(ValueError, match=message):
        validate(with_(path, value))


def test_a_sweep_of_one_sae_is_refused():
    p = with_("train.grids", {})
    with pytest.raises(ValueError, match=r"train expands to 1 SAE\(s\)"):
        validate(p)


def test_cli_fails_before_writing_its_marker(tmp_path):
    (tmp_path / "params.yaml").write_text(config.dump_yaml(with_("train.eval.downstream_context", 4)))
    run = lambda: subprocess.run([sys.executable, "-m", "treesae.stages.validate"], capture_output=True, text=True,
                                 env={"TREESAE_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    res = run()
    assert res.returncode != 0 and "downstream_context" in res.stderr and "no output was touched" in res.stderr
    assert not (tmp_path / "build" / "params.ok").exists()
    (tmp_path / "params.yaml").write_text(config.dump_yaml(GOOD))
    assert run().returncode == 0 and (tmp_path / "build" / "params.ok").read_text() == "params.yaml is valid\n"
