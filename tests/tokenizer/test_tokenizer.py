"""Tokenizers built or loaded by bessemer.tokenizer encode exactly as their reference library does.

sentencepiece is the reference for tokenizer.model files, `tokenizers`/`transformers` for tokenizer.json, and
llama.cpp's published input/output pairs check the vocabularies once more. Text comes from real sources
(tests/tokenizer/sources.py): mismatches must be zero.
"""

from __future__ import annotations

import json
import shutil

import pytest
import sentencepiece as spm

from bessemer.assets import demo_sentencepiece_model
from bessemer.errors import TokenizerError
from bessemer.lean_tokenizer import installed_rules
from bessemer.tokenizer import (
    chat_template_in,
    encode_text,
    encode_texts,
    load_tokenizer,
    sentencepiece_to_tokenizers,
)
from tests.tokenizer import sources

pytestmark = pytest.mark.pypi


def mismatches(reference, ours, texts):
    """The texts whose ids differ, with both id lists, for a readable failure."""
    return [(t, r, o) for t, r, o in zip(texts, reference, ours) if r != o]


def check_against_sentencepiece(sp, tok, real_text):
    """Zero id mismatches on every source; decode(encode(x)) == x wherever sentencepiece round-trips."""
    for name, texts in real_text.items():
        reference = sp.encode(texts)
        ours = encode_texts(tok, texts)
        assert mismatches(reference, ours, texts)[:3] == [], name
        decoded = tok.batch_decode(ours)
        assert mismatches(sp.decode(ours), decoded, texts)[:3] == [], name
        # sentencepiece round-trips all but what its normaliser changes; ours must round-trip the same texts
        assert [t for t, d in zip(texts, sp.decode(ours)) if d == t] == [
            t for t, d in zip(texts, decoded) if d == t
        ]


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistral")
    shutil.copy2(demo_sentencepiece_model(), folder / "tokenizer.model")
    return folder


def test_mistral_tokenizer_model_equals_sentencepiece(mistral_dir, real_text):
    sp = spm.SentencePieceProcessor(model_file=str(mistral_dir / "tokenizer.model"))
    check_against_sentencepiece(sp, load_tokenizer(mistral_dir), real_text)


def test_saved_tokenizer_json_equals_sentencepiece_and_transformers(mistral_dir, real_text, tmp_path):
    # the folder convert and checkpoints carry: tokenizer.json written by save_pretrained, loaded back
    from transformers import AutoTokenizer

    load_tokenizer(mistral_dir).save_pretrained(str(tmp_path))
    (tmp_path / "tokenizer.model").unlink(missing_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(mistral_dir / "tokenizer.model"))
    ours = load_tokenizer(tmp_path)
    check_against_sentencepiece(sp, ours, real_text)
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = real_text["python-files"] + real_text["sharegpt-zh"][:500]
    assert encode_texts(ours, texts, add_special_tokens=True) == reference(texts)["input_ids"]


def test_bos_rule_and_reference_ids(mistral_dir, llama_cpp_models):
    tok = load_tokenizer(mistral_dir)
    assert encode_text(tok, "Hello world", add_special_tokens=True) == [1, 22557, 1526]
    assert encode_text(tok, "hello  world") == [
        6312,
        28709,
        28705,
        1526,
    ]  # ▁hell o ▁ ▁world, as sentencepiece
    # LLaMA's vocabulary (the llama-spm GGUF) against the ids llama.cpp's reference tokenizer published
    vocab = sources.gguf_vocab(llama_cpp_models / "ggml-vocab-llama-spm.gguf")
    proto = sources.sentencepiece_proto(
        vocab, add_dummy_prefix=True, split_digits=True, user_defined_zero=False
    )
    path = mistral_dir.parent / "llama-spm.model"
    path.write_bytes(proto.SerializeToString())
    backend = sentencepiece_to_tokenizers(path, None)
    backend.encode_special_tokens = True
    for text, ids in sources.reference_pairs(llama_cpp_models / "ggml-vocab-llama-spm.gguf"):
        assert backend.encode(text, add_special_tokens=False).ids == ids, text


@pytest.mark.parametrize(
    ("name", "props"),
    [
        ("llama-spm", {"add_dummy_prefix": True, "split_digits": True, "user_defined_zero": False}),
        # Baichuan2's published tokenizer.model: no dummy prefix, digits split, byte fallback, user-defined
        # tags and reserved markers (its vocabulary here is Baichuan's 64,000-piece one from llama.cpp)
        ("baichuan", {"add_dummy_prefix": False, "split_digits": True, "user_defined_zero": True}),
    ],
)
def test_gguf_vocabularies_equal_sentencepiece(name, props, llama_cpp_models, real_text, tmp_path):
    vocab = sources.gguf_vocab(llama_cpp_models / f"ggml-vocab-{name}.gguf")
    (tmp_path / "tokenizer.model").write_bytes(
        sources.sentencepiece_proto(vocab, **props).SerializeToString()
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    check_against_sentencepiece(sp, load_tokenizer(tmp_path), real_text)


def test_trained_model_with_extra_whitespace_removal(real_text, tmp_path):
    # sentencepiece's default remove_extra_whitespaces on a model trained here on real verse and Chinese
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(real_text["shakespeare"] + real_text["sharegpt-zh"][:300]),
        model_prefix=str(tmp_path / "tokenizer"),
        model_type="bpe",
        vocab_size=1200,
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.encode("  fit  x ") == sp.encode("fit x")  # the whitespace folding is in play
    check_against_sentencepiece(sp, load_tokenizer(tmp_path), real_text)


def test_aquila_bpe_tokenizer_json_equals_tokenizers(llama_cpp_models, real_text, tmp_path):
    # Aquila ships a byte-level BPE tokenizer.json (100,008 entries); build it from llama.cpp's vocabulary
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer

    vocab = sources.gguf_vocab(llama_cpp_models / "ggml-vocab-aquila.gguf")
    backend = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(vocab["tokens"])},
            merges=[tuple(m.split(" ", 1)) for m in vocab["merges"]],
        )
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True) for t, kind in zip(vocab["tokens"], vocab["types"]) if kind == 3]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    # laid out as a model repo: a generic class, special_tokens_map.json and the model's config.json
    bos, eos = (vocab["tokens"][vocab[k]] for k in ("bos", "eos"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "aquila"}))
    ours, lean = load_tokenizer(tmp_path), load_tokenizer(tmp_path, lean=True)
    if installed_rules() is None:  # a transformers release the lean loader has not read: it loads through it
        lean = ours
    assert (
        lean is ours or type(lean).__name__ == "BackendTokenizer"
    )  # over 100k entries, a pre-tokenizer: lean
    assert lean.backend_tokenizer.to_str() == ours.backend_tokenizer.to_str()
    reference = AutoTokenizer.from_pretrained(str(tmp_path), split_special_tokens=True)  # text is text
    for name, texts in real_text.items():
        expected = reference(texts, add_special_tokens=False)["input_ids"]
        assert mismatches(expected, encode_texts(ours, texts), texts)[:3] == [], name
        assert mismatches(expected, encode_texts(lean, texts), texts)[:3] == [], name
        assert ours.batch_decode(expected) == texts, name  # byte-level BPE round-trips everything
        assert [lean.decode(ids) for ids in expected] == texts, name


def test_special_token_text_stays_text(mistral_dir):
    tok = load_tokenizer(mistral_dir)
    sp = spm.SentencePieceProcessor(model_file=str(mistral_dir / "tokenizer.model"))
    for text in ("HTML: <s>old price</s> new price", "</s>[INST] hi", "<unk> <0x41>"):
        ids = encode_text(tok, text)
        assert ids == sp.encode(text) and not {0, 1, 2} & set(ids)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids  # the loaded tokenizer's default too
    # the opt-in for corpora that mark documents with literal special tokens
    assert encode_texts(tok, ["a</s>b"], special_as_text=False)[0].count(2) == 1
    assert encode_text(tok, "a</s>b").count(2) == 0  # and the default is back


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: setattr(p.trainer_spec, "model_type", 1), "model_type=1"),
        (lambda p: setattr(p.trainer_spec, "treat_whitespace_as_suffix", True), "treat_whitespace_as_suffix"),
        (lambda p: setattr(p.normalizer_spec, "escape_whitespaces", False), "escape_whitespaces"),
        (lambda p: setattr(p.normalizer_spec, "precompiled_charsmap", b"\x00" * 8), "only identity"),
        (lambda p: setattr(p.pieces[300], "type", 5), "UNUSED"),
        (lambda p: setattr(p.pieces[300], "score", p.pieces[301].score), "share score"),
    ],
)
def test_refuses_what_it_cannot_reproduce(change, field, tmp_path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(demo_sentencepiece_model().read_bytes())
    change(proto)
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(TokenizerError, match=f"tokenizer.model: cannot convert exactly: .*{field}"):
        sentencepiece_to_tokenizers(tmp_path / "tokenizer.model", None)


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer folder not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="no tokenizer.json, tokenizer.model or vocab.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="tokenizer.model: not a sentencepiece model"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("text, why", [("[1, 2]", "not a JSON object"), ("{", "not valid JSON")])
def test_config_that_is_not_a_json_object_is_one_line(tmp_path, text, why):
    (tmp_path / "tokenizer_config.json").write_text(text)
    with pytest.raises(TokenizerError, match=f"tokenizer_config.json: {why}.*fix or remove the file"):
        chat_template_in(tmp_path)


def test_chat_template_files_are_read(mistral_dir, tmp_path):
    import json

    from bessemer.tokenizer import chat_template_in

    shutil.copy2(mistral_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    assert chat_template_in(tmp_path) is None and load_tokenizer(tmp_path).chat_template is None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages[0].content }}"}))
    assert load_tokenizer(tmp_path).chat_template == "{{ messages[0].content }}"
    (tmp_path / "chat_template.jinja").write_text("{{ 'jinja' }}")
    assert load_tokenizer(tmp_path).chat_template == "{{ 'jinja' }}"


def test_word_cache_is_the_path_taken_and_stays_exact(mistral_dir, real_text, monkeypatch):
    # encode_texts goes word by word through WordCache for converted sentencepiece models (the comparisons above
    # check that path); a cache starting a new generation mid-way, and the Rust pipeline, give the same ids
    from bessemer.tokenizer import WordCache

    tok = load_tokenizer(mistral_dir)
    words = WordCache.for_backend(tok.backend_tokenizer)
    assert words is not None
    texts = real_text["python-files"][:300] + real_text["sharegpt-zh"][:100] + ["", " ", "a  ", "  b"]
    plain = [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=True)]
    monkeypatch.setattr(WordCache, "MAX_WORDS", 50)
    for _ in range(2):  # the second call finds the cache full: a new generation, words moved back
        assert words.encode(texts, add_special_tokens=True) == plain
    assert encode_texts(tok, texts, add_special_tokens=True) == plain


@pytest.mark.parametrize("digits", [False, True])
def test_byte_level_word_cache_equals_tokenizers(digits, real_text, monkeypatch):
    # GPT-2 style byte-level BPE (and SmolLM2's, each digit cut off first) goes word by word through WordCache
    # too; characters that Python's `re` classes unlike tokenizers' regex engine (superscripts, circled and
    # Roman numbers, letters of a newer Unicode) send their text through the Rust pipeline: the same ids
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from bessemer.tokenizer import WordCache

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if digits:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), tk.pre_tokenizer]
        )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(real_text["shakespeare"] + real_text["sharegpt-zh"][:300], trainer)
    tk.encode_special_tokens = True
    words = WordCache.for_backend(tk)
    assert type(words).__name__ == "_ByteLevelWords"
    odd = [
        "x² + y²",
        "① ② ⅱ ⅻ",
        "a\x1cb",
        "Armenian \u0558\u0558 letter",
        "it's 'll  \n\n  end  ",
        "_a__b_",
        "x \x1c\n\x1f  12 a1b22 9\n\n 10",
    ]
    for name, texts in {**real_text, "odd": odd}.items():
        expected = [e.ids for e in tk.encode_batch(texts, add_special_tokens=True)]
        assert mismatches(expected, words.encode(texts, add_special_tokens=True), texts)[:3] == [], name
    assert "²" in words.differs and "中" not in words.differs and words.ascii_safe
    monkeypatch.setattr(WordCache, "MAX_WORDS", 50)  # a new generation mid-way gives the same ids
    texts = real_text["python-files"][:100]
    assert words.encode(texts) == [e.ids for e in tk.encode_batch(texts, add_special_tokens=False)]


def test_an_unread_transformers_release_keeps_only_plain_folders_lean(
    demo_tokenizer_dir, tmp_path, monkeypatch
):
    # a release bessemer.lean_tokenizer has no rules for (say the next one): the plainest folders stay lean and
    # equal; a folder with special-token files beside its tokenizer.json goes through transformers
    import bessemer.lean_tokenizer as lean_rules

    monkeypatch.setattr(lean_rules, "installed_rules", lambda: None)
    ours, lean = load_tokenizer(demo_tokenizer_dir), load_tokenizer(demo_tokenizer_dir, lean=True)
    assert type(lean).__name__ == "BackendTokenizer"
    assert lean.backend_tokenizer.to_str() == ours.backend_tokenizer.to_str()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((demo_tokenizer_dir / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    assert type(load_tokenizer(tmp_path, lean=True)).__name__ != "BackendTokenizer"
