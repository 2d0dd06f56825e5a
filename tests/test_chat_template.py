"""render_chat_template renders real chat templates exactly as transformers' apply_chat_template does."""

from __future__ import annotations

import json

import jinja2
import pytest

from bessemer.chat_template import render_chat_template
from tests.test_templates import CHATML, TEMPLATE_CASES, real_tokenizer_dir

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": 'Say "2+2" twice, <b>bold</b> & {"json": 1} </s><|im_end|>'},
    {"role": "assistant", "content": "4\nfour"},
    {"role": "user", "content": "中文? </s><|im_end|>"},
]
# with and without a system message, one to several turns, ending on either role; special-token and markup
# text in messages stays text (tests/test_backend_tokenizer.py renders the same conversations)
CONVERSATIONS = [
    TURNS[:1],
    [SYSTEM, *TURNS[:1]],
    TURNS[:2],
    TURNS[:3],
    [SYSTEM, *TURNS[:4]],
    TURNS,
    [SYSTEM, *TURNS],
]


def assert_renders_like(ref, template: str) -> None:
    """Ours equals transformers' text for every conversation, with and without the generation prompt."""
    for messages in CONVERSATIONS:
        for gen in (True, False):
            want = ref.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=gen
            )
            ours = render_chat_template(
                template, messages, add_generation_prompt=gen, special_tokens=ref.special_tokens_map
            )
            assert ours == want, (messages, gen)


@pytest.fixture(scope="module")
def demo_reference(demo_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))


def test_chatml_and_environment_features_render_like_transformers(demo_reference):
    assert_renders_like(demo_reference, CHATML)
    # the features transformers' environment adds: loop controls, tojson without HTML escaping, dict,
    # namespace, the {% generation %} block, bos_token from the special tokens, trim_blocks / lstrip_blocks
    features = (
        "{{ bos_token }}{% set ns = namespace(n=0) %}\n"
        "  {% for m in messages %}\n"
        "    {% if loop.index > 3 %}{% break %}{% endif %}\n"
        "    {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
        "    {% set ns.n = ns.n + 1 %}\n"
        "    {% generation %}{{ m | tojson }}{% endgeneration %}\n"
        "  {% endfor %}\n"
        "{{ dict(a=1, b=[1, 2]) | tojson(indent=2) }}{{ dict.fromkeys(['x']) | tojson }}{{ ns.n }}\n"
        "{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
    )
    assert_renders_like(demo_reference, features)
    rendered = render_chat_template(
        features, [{"role": "user", "content": "<b>&"}], add_generation_prompt=False, special_tokens={}
    )
    assert json.dumps({"role": "user", "content": "<b>&"}, ensure_ascii=False) in rendered


def test_template_refusals_and_sandbox():
    refuse = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(jinja2.TemplateError, match="first must be user"):
        render_chat_template(
            refuse, [{"role": "system", "content": "x"}], add_generation_prompt=False, special_tokens={}
        )
    # templates run sandboxed: no Python internals, no underscore names on a namespace, nothing mutated
    for escape in (
        "{{ messages.__class__.__mro__ }}",
        "{% set ns = namespace(_x=1) %}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ messages.append(1) }}",
    ):
        with pytest.raises(jinja2.exceptions.SecurityError):
            render_chat_template(
                escape, [{"role": "user", "content": "x"}], add_generation_prompt=False, special_tokens={}
            )
    day = render_chat_template("{{ strftime_now('%Y') }}", [], add_generation_prompt=False, special_tokens={})
    assert day.isdigit() and len(day) == 4


@pytest.mark.pypi
@pytest.mark.parametrize(("kind", "template"), TEMPLATE_CASES)
def test_real_templates_render_like_transformers(kind, template, tmp_path):
    from transformers import AutoTokenizer

    from bessemer.tokenizer import chat_template_in

    folder = real_tokenizer_dir(kind, template, tmp_path)
    ref = AutoTokenizer.from_pretrained(str(folder))
    assert_renders_like(ref, chat_template_in(folder))
