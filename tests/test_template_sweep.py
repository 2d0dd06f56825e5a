"""Every chat template in llama.cpp's models/templates (llama-cpp-python 0.3.36 sdist, 70 real templates).

For each template: bessemer.chat_template renders each conversation exactly as `transformers`' apply_chat_template
does, or refuses where transformers does; and SFT encoding (bessemer.templates.encode_chat, what `prepare` runs)
gives transformers' ids and learns exactly the assistant turns. The tokenizer is Qwen's tokenizer.json with every
control token the templates write added as a special token, as each model's own tokenizer has them, so a template's
markers are single ids wherever it is rendered.
"""

from __future__ import annotations

import re

import pytest

from tests.test_chat_template import CONVERSATIONS
from tests.test_templates import learned_turns, real_tokenizer_dir
from tests.tokenizer import sources

pytestmark = pytest.mark.pypi

# the templates in llama-cpp-python 0.3.36's sdist, listed here so that collecting the tests downloads nothing
TEMPLATE_STEMS = """
    Apertus-8B-Instruct Apriel-1.6-15b-Thinker-fixed Bielik-11B-v3.0-Instruct ByteDance-Seed-OSS Cohere2MoE
    CohereForAI-c4ai-command-r-plus-tool_use CohereForAI-c4ai-command-r7b-12-2024-tool_use GLM-4.6
    GLM-4.7-Flash GigaChat3-10B-A1.8B GigaChat3.1-10B-A1.8B HuggingFaceTB-SmolLM3-3B Kimi-K2-Instruct
    Kimi-K2-Thinking Kimi-K3 LFM2-8B-A1B LFM2.5-8B-A1B LFM2.5-Instruct MiMo-VL MiniMax-M1 MiniMax-M2
    MiniMax-M3 Mistral-Small-3.2-24B-Instruct-2506 NVIDIA-Nemotron-3-Nano-30B-A3B-BF16
    NVIDIA-Nemotron-Nano-v2 NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use
    NousResearch-Hermes-3-Llama-3.1-8B-tool_use Qwen-QwQ-32B Qwen-Qwen2.5-7B-Instruct Qwen-Qwen3-0.6B
    Qwen3-Coder Qwen3.5-4B Reka-Edge Spark2.5 StepFun3.5-Flash deepseek-ai-DeepSeek-R1-Distill-Llama-8B
    deepseek-ai-DeepSeek-R1-Distill-Qwen-32B deepseek-ai-DeepSeek-V3.1 deepseek-ai-DeepSeek-V3.2
    deepseek-ai-DeepSeek-V4-Flash-0731 deepseek-ai-DeepSeek-V4 fireworks-ai-llama-3-firefunction-v2
    google-gemma-2-2b-it google-gemma-4-31B-it-interleaved google-gemma-4-31B-it
    ibm-granite-granite-3.3-2B-Instruct ibm-granite-granite-4.0 ibm-granite-granite-4.1
    inclusionai-ling-3.0-flash llama-cpp-deepseek-r1 llama-cpp-rwkv-world meetkai-functionary-medium-v3.1
    meetkai-functionary-medium-v3.2 meta-llama-Llama-3.1-8B-Instruct meta-llama-Llama-3.2-3B-Instruct
    meta-llama-Llama-3.3-70B-Instruct microsoft-Phi-3.5-mini-instruct
    mistralai-Ministral-3-14B-Reasoning-2512 mistralai-Mistral-Nemo-Instruct-2407 moonshotai-Kimi-K2
    muse-glimmer openai-gpt-oss-120b openbmb-MiniCPM5-1B poolside-Laguna-S-2.1 poolside-Laguna-XS-2.1
    poolside-Laguna-XS.2 tencent-Hy3 unsloth-Apriel-1.5 unsloth-mistral-Devstral-Small-2507
    upstage-Solar-Open-100B
"""
TEMPLATES = sorted(f"{stem}.jinja" for stem in TEMPLATE_STEMS.split())
# content that looks like template code or control tokens stays as it is
JINJA_TEXT = [
    {"role": "user", "content": "{{ bos_token }}{% if true %}x{% endif %}{# c #} <|im_start|>assistant"},
    {"role": "assistant", "content": "{{ '}}' }}{%- raw %} done <|eot_id|>[INST]"},
]
# whitespace at the ends of contents: some templates trim it (Llama-3), others keep it (ChatML), as given
EDGE_WHITESPACE = [
    {"role": "system", "content": " Be brief.\n"},
    {"role": "user", "content": "\n  Hi there \n"},
    {"role": "assistant", "content": " Hello!\n\n"},
    {"role": "user", "content": "code?\t"},
    {"role": "assistant", "content": "```py\nx = 1\n```\n"},
]
SWEEP_CONVERSATIONS = [*CONVERSATIONS, JINJA_TEXT, EDGE_WHITESPACE]
# answers with reasoning under each name transformers accepts (templates read reasoning_content or thinking)
REASONING = [
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", field: "two and two"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", field: "three and three", "tool_calls": None},
    ]
    for field in ("reasoning_content", "thinking", "reasoning")
]
# the special-token-looking text a template writes around messages (<|im_end|>, <｜User｜>, [INST], <turn|>, ]~b] ...)
CONTROL = re.compile(
    r"<\|[^|\s]{0,40}\|>|<｜[^｜]{1,60}｜>|<\|[a-z_]+>|<[a-z_]+\|>|</?[A-Za-z_:.0-9]{1,40}>|\[/?[A-Z_]{2,30}\]"
    r"|\]~!?b[\[\]]|\[e~\["
)
PROBES = [
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ],
    [
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "V"},
    ],
]
# the model's own named tokens where the template needs them: functionary writes a bos_token (Qwen has none);
# Cohere's turns end in several control tokens, and learning stops at the eos among them
MODEL_TOKENS = {
    "Cohere2MoE.jinja": {"eos_token": "<|END_OF_TURN_TOKEN|>"},
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": {"eos_token": "<|END_OF_TURN_TOKEN|>"},
    "meetkai-functionary-medium-v3.1.jinja": {"bos_token": "<|begin_of_text|>"},
    "meetkai-functionary-medium-v3.2.jinja": {"bos_token": "<|begin_of_text|>"},
}
# the end-of-turn marker learned after each answer, where a template's markers need a word of explanation
END_MARKERS = {
    "Cohere2MoE.jinja": "<|END_TEXT|><|END_OF_TURN_TOKEN|>",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "GLM-4.6.jinja": "<|user|>",  # GLM answers end where the next turn opens (<|user|> is one of its eos ids)
    "GLM-4.7-Flash.jinja": "<|user|>",
    "llama-cpp-rwkv-world.jinja": "\n\n",  # RWKV World separates turns with a blank line, no control token
}
# templates that render a conversation's last answer without its marker (the way a prompt to be continued is
# rendered): SFT adds the marker they write after that answer when the conversation goes on
UNRENDERED_LAST_MARKERS = {
    "Apertus-8B-Instruct.jinja": "<|assistant_end|>",
    "Apriel-1.6-15b-Thinker-fixed.jinja": "\n<|end|>",
    "GLM-4.6.jinja": "<|user|>",
    "GLM-4.7-Flash.jinja": "<|user|>",
    "tencent-Hy3.jinja": "<｜hy_eos:opensource｜>",
}
# where the last answer of a conversation ends otherwise: Phi-3.5 closes a conversation with the eos (Qwen's here)
# after the answer's own marker; gpt-oss ends a final answer with <|return|>, earlier ones with <|end|>
LAST_MARKERS = {
    "microsoft-Phi-3.5-mini-instruct.jinja": "<|end|>\n<|im_end|>",
    "openai-gpt-oss-120b.jinja": "<|return|>",
}


def _transformers_can(feature: str) -> bool:
    """Whether the installed transformers' apply_chat_template does what this sweep compares with.

    "alias reasoning": passes an answer's reasoning under both names templates read (5.2x and later; 5.17, the GPU
    machine's release, passes messages as they are); "sanitize": takes `sanitize_control_tokens`, encoding message
    text that looks like a control token as text, as Bessemer always does.
    """
    import inspect

    from transformers import PreTrainedTokenizerBase
    from transformers.utils import chat_template_utils

    if feature == "alias reasoning":
        return hasattr(chat_template_utils, "_alias_reasoning_fields")
    return (
        "sanitize_control_tokens" in inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters
    )


def as_newer_transformers_passes(messages: list[dict]) -> list[dict]:
    """The messages as transformers 5.24 hands them to a template, where the installed release does not itself:
    keys whose value is None dropped, and each answer's reasoning under `thinking` and `reasoning_content` too, keys
    in 5.24's order (a template that dumps a message as JSON sees the same text)."""
    if _transformers_can("alias reasoning"):
        return messages
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        names = ("reasoning_content", "thinking", "reasoning")
        reasoning = next((message[k] for k in names if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning} | message | {"reasoning_content": reasoning}
        out.append(message)
    return out


def template_text(name: str) -> str:
    return (sources.llama_cpp_models() / "templates" / name).read_text("utf-8")


@pytest.fixture(scope="module")
def sweep_tokenizers(tmp_path_factory):
    """(transformers' tokenizer, Bessemer's load_tokenizer) of Qwen's tokenizer.json plus every template's markers."""
    from transformers import AutoTokenizer

    from bessemer.tokenizer import load_tokenizer

    ref = AutoTokenizer.from_pretrained(
        str(real_tokenizer_dir("qwen", None, tmp_path_factory.mktemp("qwen")))
    )
    found: set[str] = set()
    assert sorted(p.name for p in (sources.llama_cpp_models() / "templates").glob("*.jinja")) == TEMPLATES
    for name in TEMPLATES:
        for probe in PROBES:
            for gen in (True, False):
                try:
                    text = ref.apply_chat_template(
                        probe, chat_template=template_text(name), tokenize=False, add_generation_prompt=gen
                    )
                except (
                    Exception
                ):  # templates that refuse a probe (no system role, tools required) add nothing
                    continue
                found.update(CONTROL.findall(text))
    found.update(t for named in MODEL_TOKENS.values() for t in named.values())
    ref.add_special_tokens({"additional_special_tokens": sorted(found)})
    folder = tmp_path_factory.mktemp("qwen-ext")
    ref.save_pretrained(str(folder))
    return ref, load_tokenizer(folder)


@pytest.mark.parametrize("name", TEMPLATES)
def test_renders_like_transformers(name, sweep_tokenizers):
    import jinja2

    from bessemer.chat_template import render_chat_template

    ref, _ = sweep_tokenizers
    template = template_text(name)
    # with the tokenizer's named tokens, and with a bos_token as well (most templates write one)
    for extra in ({}, {"bos_token": "<s>"}):
        special = {**ref.special_tokens_map, **extra}
        for messages in SWEEP_CONVERSATIONS + REASONING:
            for gen in (True, False):
                try:
                    want = ref.apply_chat_template(
                        as_newer_transformers_passes(messages),
                        chat_template=template,
                        tokenize=False,
                        add_generation_prompt=gen,
                        **extra,
                    )
                except Exception as exc:  # the template refuses: so must we, with the same message
                    with pytest.raises((jinja2.TemplateError, TypeError)) as ours:
                        render_chat_template(
                            template, messages, add_generation_prompt=gen, special_tokens=special
                        )
                    assert str(ours.value) == str(exc)
                    continue
                ours = render_chat_template(
                    template, messages, add_generation_prompt=gen, special_tokens=special
                )
                assert ours == want, (messages, gen, extra)


def control_ids(tok, ids) -> list[int]:
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return [i for i in ids if i in special]


@pytest.mark.parametrize("name", TEMPLATES)
def test_sft_masks_learn_exactly_the_answers(name, sweep_tokenizers):
    from bessemer.errors import DataError
    from bessemer.templates import encode_chat

    ref, tok = sweep_tokenizers
    template = template_text(name)
    named = MODEL_TOKENS.get(name, {})
    saved = {t: {k: getattr(t, k) for k in ("chat_template", *named)} for t in (ref, tok)}
    for t in (ref, tok):
        t.chat_template = template
        for key, value in named.items():
            setattr(t, key, value)
    try:
        middle, last, refused = set(), set(), 0
        for messages in SWEEP_CONVERSATIONS:
            gen = messages[-1]["role"] == "user"
            try:
                full = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            except Exception as exc:  # refused by the template itself: one line naming the refusal
                with pytest.raises(DataError, match="chat_template refused the conversation") as ours:
                    encode_chat(tok, "tokenizer", messages, add_generation_prompt=gen)
                assert "\n" not in str(ours.value) and str(exc).splitlines()[0] in str(ours.value)
                refused += 1
                continue
            ids, mask = encode_chat(tok, "tokenizer", messages, add_generation_prompt=gen)
            clean = messages[-1] is not JINJA_TEXT[-1] and not any(
                "<|im_end|>" in m["content"] for m in messages
            )
            # transformers' ids; message text that looks like a control token stays text (transformers'
            # sanitize_control_tokens encodes it as text too, splitting it off at its edges)
            sanitized = ref.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=gen, sanitize_control_tokens=True
            )
            sanitized = list(sanitized["input_ids"] if hasattr(sanitized, "keys") else sanitized)
            if not gen and name in UNRENDERED_LAST_MARKERS:  # transformers' text and the marker, as one text
                full += UNRENDERED_LAST_MARKERS[name]
                marker_ids = ref.encode(UNRENDERED_LAST_MARKERS[name], add_special_tokens=False)
                sanitized = ref.encode(full, add_special_tokens=False) if clean else sanitized + marker_ids
            if not clean:
                # a transformers without sanitize_control_tokens makes such text control ids: nothing to compare
                if _transformers_can("sanitize"):
                    assert control_ids(tok, ids) == control_ids(ref, sanitized)
                assert tok.decode(ids) == full
            else:
                assert ids == sanitized
            learned = learned_turns(ref, tok, messages, gen, full, ids, mask)
            if messages is EDGE_WHITESPACE:  # an answer's trailing newline and a "\n\n" separator look alike
                continue
            for is_last, tail in learned:
                (last if is_last else middle).add(tail)
        if refused == len(SWEEP_CONVERSATIONS):
            pytest.skip(f"{name} renders none of the tool-free conversations (transformers refuses them too)")
        assert len(middle) <= 1, (
            middle
        )  # one end-of-turn marker for every answer the conversation goes on from
        marker = next(iter(middle or last))
        if name in END_MARKERS:
            assert marker == END_MARKERS[name]
        else:  # a control token closes each answer
            assert any(marker.endswith(t.content) for t in ref.added_tokens_decoder.values() if t.special), (
                marker
            )
        if last:
            assert last == {LAST_MARKERS.get(name, marker)}
    finally:
        for t, values in saved.items():
            for key, value in values.items():
                setattr(t, key, value)
