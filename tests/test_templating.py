from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.templating import CompiledTemplate, TemplateRefused

CHAT = '{"message": "{{ input.user_message }}", "user": "{{ context.user }}"}'
HOSTILE = [
    'she said "hi"',
    "line one\nline two\r\n\ttabbed",
    "back\\slash \\n not a newline",
    "unicode: é ü 中文 🚀 \u2028 \u0000",
    "{{ 7*7 }}",
    "{% for x in y %}",
    '", "injected": "yes',
    "</script><script>alert(1)</script>",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_arrive_as_exact_json_strings(text: str) -> None:
    rendered = CompiledTemplate(CHAT).render({"input": {"user_message": text}, "context": {"user": text}})
    assert json.loads(rendered) == {"message": text, "user": text}


@given(st.text())
def test_any_string_renders_to_valid_json_with_the_exact_string(text: str) -> None:
    rendered = CompiledTemplate(CHAT).render({"input": {"user_message": text}, "context": {}})
    assert json.loads(rendered)["message"] == text


def test_dicts_and_lists_render_as_json_and_scalars_as_json_literals() -> None:
    template = CompiledTemplate('{"ctx": {{ context }}, "n": {{ input.n }}, "ok": {{ input.ok }}, "none": "{{ x }}"}')
    rendered = template.render({"context": {"a": [1, "two"]}, "input": {"n": 2.5, "ok": True}})
    assert json.loads(rendered) == {"ctx": {"a": [1, "two"]}, "n": 2.5, "ok": True, "none": ""}


def test_undefined_names_render_empty_even_when_chained() -> None:
    assert CompiledTemplate('"{{ a.b.c }}{{ input.missing }}"').render({"input": {}}) == '""'


def test_string_input_is_available_as_input() -> None:
    assert json.loads(CompiledTemplate('{"q": "{{ input }}"}').render({"input": 'a "q"'})) == {"q": 'a "q"'}


def test_tojson_filter_is_not_escaped_twice() -> None:
    rendered = CompiledTemplate('{"m": {{ input | tojson }}}').render({"input": {"k": "v"}})
    assert json.loads(rendered) == {"m": {"k": "v"}}


def test_past_turns_loop_builds_openai_messages() -> None:
    template = CompiledTemplate(
        '{"messages": [{% for t in past_turns %}{"role": "user", "content": "{{ t.input }}"}, '
        '{"role": "assistant", "content": "{{ t.output }}"}, {% endfor %}'
        '{"role": "user", "content": "{{ input.user_message }}"}]}'
    )
    rendered = template.render(
        {"past_turns": [{"input": "hi", "output": 'hello "you"'}], "input": {"user_message": "bye"}}
    )
    assert [m["content"] for m in json.loads(rendered)["messages"]] == ["hi", 'hello "you"', "bye"]


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ input['__class__'] }}",
        "{{ input | attr('__class__') }}",
    ],
)
def test_sandbox_escapes_are_refused_at_compile_time(source: str) -> None:
    with pytest.raises(TemplateRefused, match="not allowed"):
        CompiledTemplate(source)


def test_dynamic_sandbox_escape_is_refused_at_render_time() -> None:
    template = CompiledTemplate("{{ input | attr(name) }}")
    with pytest.raises(TemplateRefused, match="sandbox"):
        template.render({"input": "x", "name": "__class__"})


def test_mutation_is_refused_by_the_immutable_sandbox() -> None:
    with pytest.raises(TemplateRefused, match="sandbox"):
        CompiledTemplate("{{ input.append(1) }}").render({"input": []})


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateRefused, match="does not compile"):
        CompiledTemplate('{"m": "{{ input.x }"}')


def test_url_rendering_percent_escapes_values() -> None:
    url = CompiledTemplate("https://api/threads/{{ session_id }}/m?u={{ input.u }}", url=True)
    assert url.render({"session_id": "a/b c?d", "input": {"u": "x&y"}}) == "https://api/threads/a%2Fb%20c%3Fd/m?u=x%26y"


def test_galtea_docs_openai_template_with_structured_input() -> None:
    from proxy.engine import CallContext

    template = CompiledTemplate(
        '{"model": "gpt-4", "messages": [{"role": "system", "content": "You are a helpful assistant."},'
        ' {% for turn in past_turns %}{"role": "user", "content": "{{ turn.input }}"},'
        ' {"role": "assistant", "content": "{{ turn.output }}"}, {% endfor %}'
        ' {"role": "user", "content": "{{ input }}"}], "raw": {{ input | tojson }}, "f": "{{ input.user_message }}"}'
    )
    ctx = CallContext(
        input={"user_message": 'a "q"', "tier": 1}, past_turns=[{"input": {"user_message": "hi"}, "output": "yo"}]
    )
    body = json.loads(template.render(ctx.template_vars()))
    assert [m["content"] for m in body["messages"]] == ["You are a helpful assistant.", "hi", "yo", 'a "q"']
    assert body["raw"] == {"user_message": 'a "q"', "tier": 1} and body["f"] == 'a "q"'
