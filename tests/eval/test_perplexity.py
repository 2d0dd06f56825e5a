"""Perplexity equals transformers' loss and lm-eval's rolling log-likelihood; text files and prepared datasets agree."""

from __future__ import annotations

import math

import pytest
import torch

from bessemer.errors import ConfigError, DataError
from bessemer.eval.perplexity import count_words, perplexity, read_tokens

TEXT = "The quick brown fox jumps over the lazy dog. " * 6 + "Ünïcode bytes count too."


def test_one_window_equals_transformers_loss(loaded_hf, hf_model, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    ids, n_bytes, _ = read_tokens(path, loaded_hf.tokenizer)
    assert n_bytes == len(TEXT.encode("utf-8")) and ids[0] == loaded_hf.tokenizer.bos_token_id
    with torch.no_grad():
        loss = float(hf_model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    r = perplexity(loaded_hf.model, ids, n_bytes, window=len(ids), stride=len(ids))
    assert r.tokens == len(ids) - 1
    assert r.nll == pytest.approx(loss, abs=1e-5)
    assert r.ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert r.bits_per_byte == pytest.approx(loss * (len(ids) - 1) / math.log(2) / n_bytes, rel=1e-6)


def test_sliding_windows_predict_each_token_once_with_the_stated_context(loaded_hf, hf_model):
    ids = loaded_hf.tokenizer(TEXT)["input_ids"]
    window, stride = 16, 5
    # reference: token t is predicted from the window ending just before the last target of its step
    total = 0.0
    with torch.no_grad():
        for start in range(1, len(ids), stride):
            end = min(start + stride, len(ids))
            begin = max(0, end - 1 - window)
            logp = torch.log_softmax(hf_model(torch.tensor([ids[begin : end - 1]])).logits[0].float(), -1)
            total -= sum(float(logp[t - 1 - begin, ids[t]]) for t in range(start, end))
    r = perplexity(loaded_hf.model, ids, 100, window, stride)
    assert r.tokens == len(ids) - 1
    assert r.nll == pytest.approx(total / (len(ids) - 1), abs=1e-5)


def test_prepared_dataset_and_errors(loaded_hf, tmp_path):
    from bessemer.data.indexed import IndexedDatasetWriter

    ids = loaded_hf.tokenizer(TEXT)["input_ids"]
    with IndexedDatasetWriter(tmp_path / "ds") as w:
        w.add_document(ids)
    got, n_bytes, _ = read_tokens(tmp_path / "ds", loaded_hf.tokenizer)
    assert got == ids and n_bytes == len(TEXT.encode("utf-8"))
    with pytest.raises(DataError, match="neither a text file nor a prepared PREFIX"):
        read_tokens(tmp_path / "nope", loaded_hf.tokenizer)
    with pytest.raises(ConfigError, match="--stride 0"):
        perplexity(loaded_hf.model, ids, 1, 8, 0)


def test_rolling_windows_equal_lm_eval(loaded_hf, hf_dir):
    """stride == window is lm-eval's rolling log-likelihood (its hf backend, eleven windows), token for token.

    lm-eval predicts its token list (which has the tokenizer's BOS) from a prefix token, so the same ids are fed.
    """
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    text = TEXT * 4
    hf = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=1, max_length=32)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    ref = hf.loglikelihood_rolling([request])[0]
    ids = [hf.prefix_token_id, *hf.tok_encode(text)]
    n_bytes = len(text.encode("utf-8"))
    r = perplexity(loaded_hf.model, ids, n_bytes, window=32, stride=32, n_words=count_words(text))
    assert r.tokens == len(ids) - 1 > 10 * 32
    assert r.nll * r.tokens == pytest.approx(-ref, abs=1e-3)
    assert r.bits_per_byte == pytest.approx(-ref / math.log(2) / n_bytes, rel=1e-6)
    # the wikitext task's metrics, by its own process_results and aggregations on the same log-likelihood
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results

    metrics = process_results({"page": text}, [ref])
    assert r.word_perplexity == pytest.approx(weighted_perplexity([metrics["word_perplexity"]]), rel=1e-5)
    assert r.byte_perplexity == pytest.approx(weighted_perplexity([metrics["byte_perplexity"]]), rel=1e-5)
    assert r.bits_per_byte == pytest.approx(bits_per_byte([metrics["bits_per_byte"]]), rel=1e-5)


def test_a_tokenizer_without_bos_still_predicts_every_token(loaded_hf, tmp_path):
    tok = loaded_hf.tokenizer

    class NoBos:  # a GPT-2-style tokenizer: adds no special tokens of its own
        bos_token_id, eos_token_id = tok.bos_token_id, tok.eos_token_id

        def __call__(self, text):
            return {"input_ids": tok(text, add_special_tokens=False)["input_ids"]}

    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert read_tokens(path, NoBos()) == read_tokens(path, tok)
