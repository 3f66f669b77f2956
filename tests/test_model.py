import pytest
import torch

from treesae import corpora, model as M


def test_hooked_transformer_matches_huggingface_on_real_text(real_model):
    hf, tok = M.hf_smollm2()
    text = corpora.documents("brown")[7].text[:2000]
    ids = tok(text, return_tensors="pt").input_ids[:, :96]
    with torch.no_grad():
        ref = torch.log_softmax(hf(ids).logits, -1)
        ours = torch.log_softmax(real_model(ids), -1)
    assert (ref - ours).abs().max() < 1e-3
    loss = real_model(ids, return_type="loss").item()
    assert 2.0 < loss < 5.0, loss  # a working model on English prose (~3.8 nats on Brown, measured)


def test_architecture_is_smollm2(real_model):
    c = real_model.cfg
    assert (c.d_model, c.n_layers, c.n_heads, c.n_key_value_heads, c.d_mlp, c.d_vocab) == (576, 30, 9, 3, 1536, 49152)
    assert c.positional_embedding_type == "rotary"
    # corpora tokenize with add_special_tokens=False: contexts start with text, not a BOS token
    assert real_model.tokenizer("Hello", add_special_tokens=False)["input_ids"] == [19556]


def test_hub_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="offline default model"):
        M.load_model("gpt2")
