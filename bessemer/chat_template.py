"""Render a model's Jinja chat template as `transformers`' apply_chat_template renders it, without transformers.

A chat template is code from the model's folder, so it runs in Jinja's immutable sandbox. The environment is set
up as transformers sets its own (read from transformers 5's chat_template_utils; written here): trim_blocks and
lstrip_blocks, the loop-controls extension (break / continue), a `{% generation %}` block that renders its body
(transformers uses it to locate assistant text), `tojson` without HTML escaping, `raise_exception`,
`strftime_now`, and `dict` / `namespace` that refuse underscore names. The template sees the messages (a
message's reasoning under both `reasoning_content` and `thinking`), `add_generation_prompt`, `tools` and
`documents` (None here) and the named special tokens (bos_token, eos_token, ...). tests/test_chat_template.py and
tests/test_template_sweep.py (all of llama.cpp's 70 templates) render real templates both ways and compare.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

# jinja2 releases before 3.1.6 have known sandbox escapes (transformers refuses them too)
MIN_JINJA = (3, 1, 6)


def render_chat_template(
    template: str, messages: list[dict], *, add_generation_prompt: bool, special_tokens: dict[str, str]
) -> str:
    """The text `template` renders for `messages` (plain dicts of strings).

    special_tokens: the tokenizer's named special tokens ({"bos_token": "<s>", ...}), visible to the template.
    Raises jinja2's TemplateError (the template's own raise_exception included) where the template refuses.
    """
    messages = [_with_reasoning_aliases({k: v for k, v in m.items() if v is not None}) for m in messages]
    return _compiled(template).render(
        **special_tokens,
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
    )


# the names a message's reasoning comes under; templates read the first (gpt-oss reads "thinking")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _with_reasoning_aliases(message: dict) -> dict:
    """The message with its reasoning under both names templates read, as transformers 5.24 passes it.

    Key order matters to templates that dump a message as JSON: `thinking` leads unless the message has it, the
    message's own keys follow, and `reasoning_content` comes last unless the message has it.
    """
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    aliased = {"thinking": reasoning}
    aliased.update(message)
    aliased["reasoning_content"] = reasoning
    return aliased


@lru_cache(maxsize=16)
def _compiled(template: str):
    """The template compiled in a sandboxed environment like transformers' (compiled once per template text)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    version = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
    if version < MIN_JINJA:
        raise ImportError(
            f"chat templates need jinja2>=3.1.6 (older ones have sandbox escapes); found {jinja2.__version__}: "
            "pip install -U jinja2"
        )

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text; rendering keeps the body as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def check_name(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template may not store the underscore name {name!r} on a namespace"
            )

    class GuardedNamespace(jinja2.utils.Namespace):
        """Jinja's namespace() that refuses names starting with "_" (a way towards Python internals)."""

        def __init__(*args, **kwargs):  # Namespace's own signature trick, so namespace(self=...) still works
            self, args = args[0], args[1:]
            for name in dict(*args, **kwargs):
                check_name(name)
            jinja2.utils.Namespace.__init__(self, *args, **kwargs)

        def __setitem__(self, name, value):
            check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    class PlainDict:
        """dict(...) and dict.fromkeys(...) for templates, without handing them the dict type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes <, >, & and ' for HTML; templates expect plain JSON
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception,
        strftime_now=lambda fmt: datetime.now().strftime(fmt),
        dict=PlainDict(),
        namespace=GuardedNamespace,
    )
    return env.from_string(template)
