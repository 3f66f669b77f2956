import itertools

import pytest

from treesae import sysdeps

TOOLS = ["apt-get", "dpkg-deb", "npm", "chromium"]


def fake_path(tmp_path, tools):
    d = tmp_path / "bin"
    d.mkdir(parents=True)
    for t in tools:
        (d / t).write_text("#!/bin/sh\nexit 0\n")
        (d / t).chmod(0o755)
    return str(d)


@pytest.mark.parametrize("present", [set(c) for n in range(5) for c in itertools.combinations(TOOLS, n)],
                         ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("foreign", [False, True], ids=["debian-node", "foreign-node"])
def test_plan_installs_exactly_what_is_missing(tmp_path, present, foreign):
    path = fake_path(tmp_path, present)
    if "apt-get" not in present:
        with pytest.raises(RuntimeError, match="apt-get is not on PATH"):
            sysdeps.plan(path, node_foreign=foreign)
        return
    want = (["dpkg"] if "dpkg-deb" not in present else []) \
        + (["npm"] if "npm" not in present and not foreign else []) \
        + (["chromium", "fonts-liberation"] if "chromium" not in present else [])
    assert sysdeps.plan(path, node_foreign=foreign) == want


def test_node_outside_dpkg_makes_npm_optional(tmp_path):
    path = fake_path(tmp_path, ["apt-get", "dpkg-deb", "chromium", "node"])  # a node no package owns
    assert sysdeps.foreign_node(path) and sysdeps.plan(path) == []
    assert sysdeps.plan(fake_path(tmp_path / "x", ["apt-get", "dpkg-deb", "chromium"])) == ["npm"]  # no node


def test_chromium_browser_counts_as_chromium(tmp_path):
    assert sysdeps.plan(fake_path(tmp_path, ["apt-get", "dpkg-deb", "npm", "chromium-browser"])) == []


def no_subprocess(*a, **k):
    raise AssertionError(f"ran {a}")


def test_main_with_everything_present_installs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sysdeps.subprocess, "run", no_subprocess)
    assert sysdeps.main(fake_path(tmp_path, TOOLS)) == 0
    assert capsys.readouterr() == ("", "")


def test_main_without_apt_get_or_root_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sysdeps.subprocess, "run", no_subprocess)
    assert sysdeps.main(fake_path(tmp_path, ["dpkg-deb", "npm", "chromium"])) == 1
    assert "apt-get is not on PATH" in capsys.readouterr().err
    monkeypatch.setattr(sysdeps.os, "geteuid", lambda: 1000)  # not root, no sudo on the fake PATH
    assert sysdeps.main(fake_path(tmp_path / "x", ["apt-get", "dpkg-deb", "npm"])) == 1
    assert "apt-get install -y -q --no-install-recommends chromium" in capsys.readouterr().err


def test_main_with_foreign_node_and_no_npm_explains_and_installs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sysdeps.subprocess, "run", no_subprocess)
    monkeypatch.setattr(sysdeps, "foreign_node", lambda path: True)
    assert sysdeps.main(fake_path(tmp_path, ["apt-get", "dpkg-deb", "chromium", "node"])) == 0
    assert "registry.npmjs.org" in capsys.readouterr().out
