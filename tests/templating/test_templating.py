from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.templating import calls
from proxy.templating.environment import CompiledTemplate, TemplateRefused

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
    from proxy.engine.results import CallContext

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


# -- bounds: compiling never runs the template, renders run under a budget ------------------------


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ (7**3000000) % 10 }}", "`\\*\\*` would make a number of about 2,535,294 digits"),
        ("{{ 7**77777 }}", "`\\*\\*` would make a number of about 65,729 digits"),
        ('{{ "a" * 10**9 }}', "`\\*` would make a value of about 1,000,000,000 characters"),
        ('{{ "%999999999d" % 1 }}', "`%` formatting would make a value"),
        ("{{ " + "7" * 5000 + " }}", "a number in it has more than 4,300 digits"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests too deeply"),
        ('{"a": "' + "x" * 100_001 + '"}', "longer than 100,000 characters"),
    ],
)
def test_templates_whose_constants_or_shape_are_too_big_are_refused_quickly(source: str, reason: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateRefused, match=reason):
        CompiledTemplate(source)
    assert time.perf_counter() - started < 0.5


def test_constants_within_the_bounds_still_work() -> None:
    rendered = CompiledTemplate('{"n": {{ 7**700 % 1000 }}, "s": "{{ "ab" * 3 }}", "t": "{{ "%03d" % 7 }}"}').render({})
    assert json.loads(rendered) == {"n": 7**700 % 1000, "s": "ababab", "t": "007"}


def test_compiling_a_stored_template_never_computes_its_constants() -> None:
    # Jinja folds constants while compiling: this took seconds on the event loop, at create and at every start.
    started = time.perf_counter()
    template = CompiledTemplate("{{ (7**3000000) % 10 }}", strict=False)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(TemplateRefused, match="template stopped: `\\*\\*` would make a number"):
        template.render({})


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "calls nest deeper than 64 levels"),
        (
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
            "took longer than 0.5s",
        ),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer than 0.5s"),
        ("{% for a in items %}{% for b in items %}{% for c in items %}{% endfor %}{% endfor %}{% endfor %}", "0.5s"),
        ("{% for i in range(100000) %}{{ big }}{% endfor %}", "rendered more than 10,485,760 characters"),
        ("{{ input.n ** 99999 }}", "`\\*\\*` would make a number of about 99,999 digits"),
        ("{{ big * 3 }}", "`\\*` would make a value of about 15,000,000 characters"),
        (
            '{% set ns = namespace(s="0123456789") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}',
            "`~` would bring the characters this render has built to about 20,971,500",
        ),
        ('{% set l = [big, big, big] %}{{ "" ~ l }}', "`~` would make a value of about 15,000,"),
        ("{% set l = [big, big, big] %}{{ l }}", "cannot be printed"),
        ("{% set l = [big, big, big] %}{{ l | tojson }}", "the `tojson` filter would make"),
        ("{% set l = [big, big, big] %}{{ l | join }}", "the `join` filter would make"),
        ('{% set l = [big, big, big] %}{{ "%s" % (l,) }}', "`%` formatting would make"),
        ('{% set l = [big, big, big] %}{{ "{}".format(l) }}', "format\\(\\) would make"),
        ('{{ "{:>999999999}".format(1) }}', "format\\(\\) would make a value of about 1,000,000,0"),
        ('{{ "a" | center(999999999) }}', "the `center` filter would make"),
        ('{{ "a".ljust(999999999) }}', "ljust\\(\\) would make"),
        ('{{ "aaaa".replace("a", big) }}', "replace\\(\\) would make"),
        ("{{ [1] | batch(999999999, 0) | list }}", "would make 999,999,999 rows"),
        # Filters that walk a value item by item, each call back into Python unseen by the clock before.
        ('{{ big | list | map("int") | list }}', "the `list` filter would walk over 5,000,000 items"),
        ('{{ big | map("upper") | list }}', "the `map` filter would walk over 5,000,000 items"),
        ('{{ big | select("equalto", "b") | list | length }}', "the `select` filter would walk over 5,000,000"),
        ("{{ big | sort }}", "the `sort` filter would walk over 5,000,000 items"),
        ("{{ big | unique | list }}", "the `unique` filter would walk over 5,000,000 items"),
        ("{{ big | wordwrap(2) }}", "the `wordwrap` filter would walk over 5,000,000 items"),
        ("{{ (items * 20) | map('string') | join }}", "the `map` filter would walk over 200,000 items"),
    ],
)
def test_a_render_over_its_budget_stops_with_a_clear_error(source: str, reason: str) -> None:
    template = CompiledTemplate(source)
    started = time.perf_counter()
    with pytest.raises(TemplateRefused, match=reason):
        template.render({"input": {"n": 10}, "big": "x" * 5_000_000, "items": list(range(10_000))})
    assert time.perf_counter() - started < 2  # the time budget is 0.5 s; the rest is slack for a busy machine


TITLE_BOMB = '{{ ((input.user_message[:1] ~ "-") * 4900000) | title | length }}'


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (TITLE_BOMB, "the `title` filter would walk over 9,800,000 items \\(the limit is 100,000\\)"),
        (
            '{{ ((input.user_message[:1] ~ "-") * 4900000) | upper | lower | length }}',
            "the `upper` filter would bring the characters this render has built to about 19,600,002 "
            "\\(the limit is 10,485,760 for all of a render's values together\\)",
        ),
        (
            "{% set a = input.user_message * 4000000 %}{% set b = input.user_message * 4000000 %}{{ a ~ b }}",
            "`\\*` would bring the characters this render has built to about 16,000,000",
        ),
        ("{{ big.upper().lower().upper() | length }}", "upper\\(\\) would bring the characters this render has built"),
        ("{{ (big ~ big[:1200000]) | e | length }}", "the `e` filter would make a value of about 12,000,000"),
        ("{{ [big, 1] | tojson | length }}", "the `tojson` filter would make a value of about 13,600,006 characters"),
        # A dict's pairs are new tuples each time: the size memo took one for another and counted `big` as "".
        ("{% set d = {'a': '', 'b': big, 'c': big} %}{{ d | tojson | length }}", "the `tojson` filter would make"),
        ("{{ big | pprint | length }}", "the `pprint` filter would walk over 4,800,000 items"),
        ("{{ big | striptags | length }}", "the `striptags` filter would walk over 4,800,000 items"),
        ("{{ big | urlencode | length }}", "the `urlencode` filter would walk over 4,800,000 items"),
        ("{{ big | indent | length }}", "the `indent` filter would walk over 4,800,000 items"),
        ("{{ big | wordcount }}", "the `wordcount` filter would walk over 4,800,000 items"),
    ],
)
def test_values_built_by_repetition_and_filters_count_against_the_render_as_they_are_built(
    source: str, reason: str
) -> None:
    """The attack: `title` over a 9.8 MB string built by `*` (one Python-speed call the clock never saw) took 2-7 s
    against the 0.5 s budget, and a chain of copies each under the 10 MB value cap was never counted as a whole.
    Each is refused before the step that would build past the budget, well inside the time budget."""
    template = CompiledTemplate(source)
    started = time.perf_counter()
    with pytest.raises(TemplateRefused, match=reason):
        template.render({"input": {"user_message": "hi"}, "big": "<a> b\n" * 800_000})
    assert time.perf_counter() - started < 0.5


ESCAPED_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@given(value=ESCAPED_VALUES)
def test_what_an_escaping_filter_is_counted_for_is_never_less_than_what_it_makes(value: object) -> None:
    """`e` and `tojson` can make a text 5 to 12 times longer than its input (`&` → `&amp;`, `🚀` → two `\\uXXXX`):
    counted at the input's length, a 9 MB input made a 27 MB value past the 10 MB cap."""
    estimates = {"e": calls._escape, "forceescape": calls._escape, "tojson": calls._tojson}
    for name, estimate in estimates.items():
        made = int(CompiledTemplate(f"{{{{ v | {name} | length }}}}").render({"v": value}))
        assert estimate(value) >= made, name


@pytest.mark.parametrize("text", [*HOSTILE, "plain ascii", "\U0001f680" * 3, "\x1f\x7f\ud800"])
def test_a_long_text_is_counted_for_what_tojson_and_e_make_of_it_without_being_encoded(text: str) -> None:
    """Past 4,096 characters a text's escapes are counted, not made: at least what the filter makes, and close."""
    long = text * (5000 // len(text) + 1)
    for name, estimate in {"e": calls._escape, "tojson": calls._tojson}.items():
        made = int(CompiledTemplate(f"{{{{ v | {name} | length }}}}").render({"v": long}))
        assert made <= estimate(long) <= 1.5 * made + 2, name


def test_loops_and_concatenation_behave_as_before_under_the_budget() -> None:
    template = CompiledTemplate(
        '{% for x in items %}{{ loop.index }}/{{ loop.length }}{{ "," if not loop.last }}{% endfor %}'
        '|{{ "a" ~ 1 ~ none ~ items }}|{% for x in [[1, 2], [3]] recursive %}{{ x if x is number else loop(x) }}'
        "{% endfor %}"
    )
    assert template.render({"items": [7, 8, 9]}) == "1/3,2/3,3/3|a1None[7, 8, 9]|123"


@pytest.mark.parametrize(("source", "url"), [("https://up.test/v1/chat", True), ('{"model": "m"}\n', False)])
def test_a_template_without_placeholders_is_rendered_once_when_compiled(
    source: str, url: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = CompiledTemplate(source, url=url)
    monkeypatch.setattr(template._template, "root_render_func", lambda context: pytest.fail("rendered per call"))
    assert template.render({"input": "x"}) == source.rstrip("\n")  # Jinja drops one trailing newline


def test_a_template_with_any_tag_or_expression_still_renders_per_call() -> None:
    for source in ("{{ input }}", "{% if input %}a{% endif %}", "{% for t in past_turns %}x{% endfor %}"):
        assert CompiledTemplate(source).constant is None
