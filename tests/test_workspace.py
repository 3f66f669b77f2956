"""``make determinism``'s comparison of two dvc.lock files."""
import yaml

from treesae.workspace import changed_outputs


def _lock(path, **md5):
    outs = [{"path": p.replace("__", "/"), "md5": h} for p, h in md5.items()]
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"s": {"cmd": "x", "outs": outs}}}))
    return path


def test_changed_outputs(tmp_path):
    a = _lock(tmp_path / "a.lock", data__t__m_csv="1", data__saes="2.dir", build__notebooks__02_ipynb="3")
    same = _lock(tmp_path / "b.lock", data__t__m_csv="1", data__saes="2.dir", build__notebooks__02_ipynb="9")
    assert changed_outputs(a, same) == []  # an executed notebook's timings do not count
    moved = _lock(tmp_path / "c.lock", data__t__m_csv="1", data__saes="4.dir", data__new="5")
    assert changed_outputs(a, moved) == ["data/new", "data/saes"]
