"""Every profile in profiles/ merges onto params.yaml and passes the same validation as `dvc repro`."""
from pathlib import Path

import pytest

from treesae import config
from treesae.stages import validate

PROFILES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_validates(profile):
    assert len(validate.validate(config.profile_params(profile))["runs"]) >= 2


def test_dead_latent_control_has_every_recipe_arm_at_two_seeds():
    runs = validate.validate(config.profile_params("deadlatents"))["runs"]
    arms = {}
    for r in runs:
        o = dict(r.options)
        arms.setdefault((o.get("aux_k", True), o.get("tied_init", True)), set()).add(r.seed)
    assert arms == {(a, t): {0, 1} for a in (True, False) for t in (True, False)}
