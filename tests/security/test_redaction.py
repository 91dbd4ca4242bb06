"""The redactor: every encoded echo of a secret is masked, and the secrets belong to one server."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.settings import MASK, MASK_NESTED_JSON_DEPTH
from proxy.connections.compiled import compile_connection
from proxy.connections.spec import parse_spec
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.security.redaction import Redactor
from tests.conftest import TEST_TOKEN, chat_connection, running_proxy
from tests.encodings import ECHOES, in_json_string, json_u_escaped, json_unescaped, revealed

# Characters that have a meaning in some encoding, beside any other (surrogates and the mask's own excepted).
SPECIAL = "\"\\/ +%&=:?#'\n\t\x00\u00e9\u00ff\u20ac\u4e2d\U0001f600"
CHARS = st.one_of(
    st.sampled_from(SPECIAL), st.characters(exclude_categories=["Cs"], exclude_characters=MASK[0] + "\ufffd")
)
SECRETS = st.text(CHARS, min_size=8, max_size=24)
SURROUNDINGS = st.text(CHARS, max_size=16)
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def mixed_case(draw: st.DrawFn, hex_digits: str) -> str:
    return "".join(d.upper() if draw(st.booleans()) else d for d in hex_digits)


@st.composite
def json_escaped(draw: st.DrawFn, secret: str) -> str:
    """Each character as it is (where a JSON string allows it), as `\\uXXXX` (either case), or a short escape."""
    out = []
    for char in secret:
        ways = ["u"] + (["short"] if char in SHORT_ESCAPES else [])
        ways += ["literal"] if char not in '"\\' and ord(char) >= 0x20 else []
        way = draw(st.sampled_from(ways))
        if way == "literal":
            out.append(char)
        elif way == "short":
            out.append(SHORT_ESCAPES[char])
        else:
            units = char.encode("utf-16-be")
            for i in range(0, len(units), 2):
                out.append("\\u" + mixed_case(draw, units[i : i + 2].hex()))
    return "".join(out)


@st.composite
def percent_encoded(draw: st.DrawFn, secret: str) -> str:
    """Each character as it is (but `%` and `+`), or as `%XX` of its UTF-8 bytes (either case); `+` for a space."""
    out = []
    for char in secret:
        if char == " " and draw(st.booleans()):
            out.append("+")
        elif char not in "%+ " and draw(st.booleans()):
            out.append(char)
        else:
            out += ["%" + mixed_case(draw, f"{byte:02x}") for byte in char.encode("utf-8")]
    return "".join(out)


@st.composite
def base64_encoded(draw: st.DrawFn, secret: str) -> str:
    """The secret's bytes inside a larger value (any bytes before and after), standard or URL-safe."""
    data = draw(st.binary(max_size=5)) + secret.encode("utf-8") + draw(st.binary(max_size=5))
    encoded = (base64.urlsafe_b64encode if draw(st.booleans()) else base64.b64encode)(data).decode()
    return encoded if draw(st.booleans()) else encoded.rstrip("=")


@st.composite
def echo_bytes(draw: st.DrawFn, secret: str) -> bytes:
    kind = draw(st.sampled_from(["plain", "json", "percent", "base64", "utf-16-le", "utf-16-be"]))
    if kind.startswith("utf-16"):
        return secret.encode(kind)
    text = {
        "plain": st.just(secret),
        "json": json_escaped(secret),
        "percent": percent_encoded(secret),
        "base64": base64_encoded(secret),
    }[kind]
    return draw(text).encode("utf-8")


def redactor_of(*secrets: str) -> Redactor:
    redactor = Redactor()
    redactor.register("test", secrets)
    return redactor


@settings(max_examples=400, deadline=None)
@given(data=st.data(), secret=SECRETS, before=SURROUNDINGS, after=SURROUNDINGS)
def test_an_echo_in_any_encoding_is_masked_in_every_reading(data: Any, secret: str, before: str, after: str) -> None:
    echo = data.draw(echo_bytes(secret))
    body = before.encode() + echo + after.encode()
    redactor = redactor_of(secret)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # UTF-16 bytes that are not UTF-8: only a body can hold them
    # A backslash drawn just before the echo escapes its first backslash, so no reading holds the secret any
    # more: verify must then say what each reading says, not what was drawn.
    if text is not None:
        assert revealed(secret, redactor.redact(text)) == []
        assert redactor.contains_secret(text) or not revealed(secret, text)
    assert revealed(secret, redactor.redact_bytes(body)) == []
    assert redactor.contains_secret(body) or not revealed(secret, body)
    assert redactor.contains_secret(echo) and revealed(secret, echo)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), secret=SECRETS, before=SURROUNDINGS, after=SURROUNDINGS)
def test_json_parsed_after_masking_holds_no_secret(data: Any, secret: str, before: str, after: str) -> None:
    echo = data.draw(json_escaped(secret))
    document = '{"reply": "' + json.dumps(before)[1:-1] + echo + json.dumps(after)[1:-1] + '", "n": 1}'
    assert secret in json.loads(document)["reply"]  # the echo is really there once parsed
    parsed = json.loads(redactor_of(secret).redact(document))
    assert secret not in parsed["reply"] and parsed["n"] == 1


def test_json_inside_a_json_string_is_masked_too() -> None:
    secret = 'tok "quoted" \\ slash/'
    inner = json.dumps({"auth": secret})
    outer = json.dumps({"body": inner})  # the secret's quotes are now escaped twice
    masked = redactor_of(secret).redact(outer)
    assert MASK in masked
    assert revealed(secret, json_unescaped(json_unescaped(masked))) == []


NESTED_ESCAPES: dict[str, Callable[[str], str]] = {
    "every character as \\u": json_u_escaped,
    "\\u in upper case beside plain characters": lambda s: "".join(
        f"\\u{ord(c):04X}" if i % 2 else json.dumps(c)[1:-1] for i, c in enumerate(s)
    ),
    "short escapes": lambda s: json.dumps(s)[1:-1],
}
KEPT = 'caf\\u00e9 \\"q\\" \\\\ \\/ \\n'  # escaped text beside the secret, at every level: none of it may change


def inside_documents(escaped: str, depth: int) -> str:
    """A reply whose "inner_doc" string holds a JSON document that holds `escaped` (a secret as a JSON string's
    content), `depth` documents deep, with escaped text beside it at every level."""
    document = '{"k": "' + escaped + '", "keep": "' + KEPT + '"}'
    for _ in range(depth - 1):
        document = '{"d": "' + in_json_string(document) + '", "keep": "' + KEPT + '"}'
    return '{"inner_doc": "' + in_json_string(document) + '", "keep": "' + KEPT + '"}'


def documents_in(text: str) -> list[dict[str, Any]]:
    """Each document of a reply made by `inside_documents`, outermost first, each parsed from its parent's string."""
    documents = [json.loads(text)]
    documents.append(json.loads(documents[0]["inner_doc"]))
    while "d" in documents[-1]:
        documents.append(json.loads(documents[-1]["d"]))
    return documents


@pytest.mark.parametrize("depth", range(1, MASK_NESTED_JSON_DEPTH + 1))
@pytest.mark.parametrize("escape", sorted(NESTED_ESCAPES))
def test_a_secret_in_a_json_document_inside_a_json_string_is_masked(escape: str, depth: int) -> None:
    """The attack: an upstream echoes the token inside a JSON document that is itself a JSON string value, its escapes
    escaped again (`{"inner_doc": "{\\"k\\": \\"\\\\u0043…\\"}"}`), `depth` documents deep. Only the echo becomes the
    mask: every document still parses, and everything beside the echo is as it was."""
    secret = 'tok "Sup3r"/Secret\t4242'  # a quote, a slash and a tab: short escapes; no backslash
    escaped = NESTED_ESCAPES[escape](secret)
    reply = inside_documents(escaped, depth)
    echo = in_json_string(escaped, depth)  # the echo as the reply holds it
    assert reply.count(echo) == 1 and documents_in(reply)[-1]["k"] == secret
    redactor = redactor_of(secret)
    masked = redactor.redact(reply)
    assert masked == reply.replace(echo, MASK)
    documents = documents_in(masked)
    assert documents[-1]["k"] == MASK
    assert [d["keep"] for d in documents] == [json.loads(f'"{KEPT}"')] * (depth + 1)
    assert revealed(secret, reply) and not revealed(secret, masked)
    assert redactor.contains_secret(reply) and not redactor.contains_secret(masked)
    assert redactor.redact_bytes(reply.encode()) == masked.encode()


def test_a_secret_nested_deeper_than_the_bound_is_not_masked() -> None:
    """The documented limit: a token inside more than MASK_NESTED_JSON_DEPTH documents, each inside a JSON string
    of the one around it, is not looked for (each level doubles its backslashes); at the bound it is."""
    escaped = json_u_escaped(TEST_TOKEN)
    redactor = redactor_of(TEST_TOKEN)
    at_bound = inside_documents(escaped, MASK_NESTED_JSON_DEPTH)
    beyond = inside_documents(escaped, MASK_NESTED_JSON_DEPTH + 1)
    assert documents_in(beyond)[-1]["k"] == TEST_TOKEN  # it is there, for a reader that parses every level
    assert redactor.redact(beyond) is beyond and not redactor.contains_secret(beyond)
    assert redactor.contains_secret(at_bound)


def test_a_plain_echo_that_cuts_an_escape_of_a_nested_document_takes_the_escape_whole() -> None:
    """The attack: the token's own text follows an escape's `\\u00` in a nested document (`caf\\\\u00e9-Sup3r…` in the
    reply), so masking the token alone would leave `\\u00` behind and the inner document would no longer parse."""
    secret = "e9-Sup3rSecret-4242"
    reply = inside_documents("caf\\u00" + secret + " end", 1)
    masked = redactor_of(secret).redact(reply)
    assert masked == reply.replace("caf\\\\u00" + secret, "caf" + MASK)
    assert documents_in(masked)[-1]["k"] == f"caf{MASK} end"


def test_an_echo_ending_in_a_backslash_keeps_the_quote_that_ends_its_string() -> None:
    """The attack: the token ends in a backslash and its string ends right after it (`…\\u005c"`), in a reply that
    also holds a nested document. Decoded once, that backslash and the quote look like an escape of a nested
    document, but the quote ends the reply's own string and must stay."""
    secret = "tok-Sup3rSecret-4242\\"
    echo = json_u_escaped(secret)
    reply = '{"k": "' + echo + '", "inner_doc": "' + in_json_string('{"k": "' + json_u_escaped("tok") + '"}') + '"}'
    masked = redactor_of(secret).redact(reply)
    assert masked == reply.replace(echo, MASK)
    assert json.loads(masked)["k"] == MASK


def test_a_nested_echo_after_a_run_of_backslashes_is_masked_from_its_own_first_backslash() -> None:
    """The attack: a backslash just before the token in a document three levels down becomes a run of 16 before the
    echo's own 8 (`\\\\…\\u0074`): the echo is masked from its own first backslash, every level still parses."""
    reply = inside_documents("\\\\" + json_u_escaped(TEST_TOKEN), 3)
    masked = redactor_of(TEST_TOKEN).redact(reply)
    assert masked == reply.replace(in_json_string(json_u_escaped(TEST_TOKEN), 3), MASK)
    assert documents_in(masked)[-1]["k"] == "\\" + MASK


def test_escaped_text_and_nested_documents_without_the_secret_are_left_as_they_are() -> None:
    """No false positive: doubled backslashes (Windows paths, regular expressions, nested documents) are decoded only
    to look for a secret, and text that holds none comes back as it was, the very same string."""
    near = TEST_TOKEN[:-1] + "X"
    texts = [
        json.dumps({"path": "C:\\users\\new\\table", "regex": "\\d+\\u0041\\\\u0042", "s": "\\"}),
        inside_documents(json_u_escaped(near), MASK_NESTED_JSON_DEPTH),  # one character off
        inside_documents(json_u_escaped(TEST_TOKEN[:6]) + "\\n" + TEST_TOKEN[6:], 2),  # cut by a newline
        inside_documents(json_u_escaped(TEST_TOKEN).replace("\\u0053", "\\u0073"), 2),  # a letter's case
        json.dumps({"code": json.dumps({"k": "\\u" + near, "hex": "\\u00e9\\uD83D\\uDE00"})}),  # `\\u`s, nested
    ]
    redactor = redactor_of(TEST_TOKEN)
    for text in texts:
        assert redactor.redact(text) is text, text


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    secret=SECRETS,
    before=SURROUNDINGS,
    after=SURROUNDINGS,
    depth=st.integers(min_value=1, max_value=MASK_NESTED_JSON_DEPTH),
)
def test_nested_documents_parsed_after_masking_hold_no_secret(
    data: Any, secret: str, before: str, after: str, depth: int
) -> None:
    """Any mix of escapes for the secret, in a document inside a JSON string, `depth` deep, each level written with
    or without non-ASCII escaped: after masking every level parses and none holds the secret."""
    echo = data.draw(json_escaped(secret))
    document = '{"k": "' + json.dumps(before)[1:-1] + echo + json.dumps(after)[1:-1] + '", "n": 1}'
    for _ in range(depth):
        document = '{"d": "' + json.dumps(document, ensure_ascii=data.draw(st.booleans()))[1:-1] + '", "n": 1}'
    redactor = redactor_of(secret)
    masked = redactor.redact(document)
    levels = [json.loads(document)]
    masked_levels = [json.loads(masked)]
    for _ in range(depth):
        levels.append(json.loads(levels[-1]["d"]))
        masked_levels.append(json.loads(masked_levels[-1]["d"]))  # still a document at every level
    assert secret in levels[-1]["k"] and secret not in masked_levels[-1]["k"]
    assert [level["n"] for level in masked_levels] == [1] * (depth + 1)
    assert redactor.contains_secret(document) and not revealed(secret, masked)


def test_a_body_that_is_not_utf8_keeps_every_byte_but_the_secrets() -> None:
    secret = "pässwörd-Ünïcode"
    head, tail = b"\x89PNG\r\n\x1a\n\xff\xfe", b"\x00\xc3(tail"
    body = head + secret.encode("utf-16-le") + b"|" + secret.encode("utf-8") + tail
    masked = redactor_of(secret).redact_bytes(body)
    assert masked == head + MASK.encode("utf-16-le") + b"|" + MASK.encode() + tail


@pytest.mark.parametrize("codec", ["utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be"])
def test_a_wide_encoding_echo_is_masked_and_found_by_verify(codec: str) -> None:
    redactor = Redactor()
    redactor.register("conn", [TEST_TOKEN])
    body = f'{{"echo": "{TEST_TOKEN}", "n": "é"}}'.encode(codec)
    masked = redactor.redact_bytes(body)
    assert TEST_TOKEN.encode(codec) not in masked and TEST_TOKEN.encode(codec) in body
    assert redactor.contains_secret(body) and not redactor.contains_secret(masked)


def test_text_without_any_form_of_a_secret_is_returned_as_it_is() -> None:
    redactor = redactor_of(TEST_TOKEN)
    text = '{"reply": "line one\\nline \\"two\\" 100% sure", "path": "a\\/b"}'
    assert redactor.redact(text) is text
    assert redactor.redact_bytes(text.encode()) == text.encode()


async def test_the_engine_maps_from_the_masked_reply() -> None:
    escaped = "".join(f"\\u{ord(c):04X}" for c in TEST_TOKEN)
    body = ('{"reply": "token ' + escaped + '", "meta": {"k": "' + escaped + '"}}').encode()
    redactor = redactor_of(TEST_TOKEN)
    engine = Engine(httpx.MockTransport(lambda request: httpx.Response(200, content=body)), redactor=redactor)
    spec = parse_spec(chat_connection("https://up.test", outputMapping={"output": "$.reply", "meta": "$.meta.k"}))
    result = await engine.call(compile_connection("ec_1", spec, "2026-01-01T00:00:00Z", False), CallContext(input="hi"))
    assert result.output == f"token {MASK}" and result.extracted["meta"] == MASK
    assert result.reply is not None and TEST_TOKEN not in json.dumps(result.reply.json)


def test_owners_forget_their_secrets_without_forgetting_anothers() -> None:
    redactor = Redactor()
    redactor.register("a", ["shared-secret-1", "only-a-secret"])
    redactor.register("b", ["shared-secret-1"])
    redactor.register("a", ["new-a-secret-2"])  # a's secrets are replaced
    assert not redactor.knows("only-a-secret") and redactor.knows("shared-secret-1")
    with redactor.scoped(["one-call-secret", "shared-secret-1"]):
        assert redactor.redact("one-call-secret") == MASK
    assert not redactor.knows("one-call-secret") and redactor.knows("shared-secret-1")
    redactor.forget("b")
    assert redactor.redact("shared-secret-1 new-a-secret-2") == f"shared-secret-1 {MASK}"


def test_two_servers_in_one_process_never_see_each_others_secrets(tmp_path: Path, upstream_url: str) -> None:
    token_a, token_b = "token-of-server-a", "token-of-server-b"
    with running_proxy(tmp_path / "a") as a, running_proxy(tmp_path / "b") as b:
        for proxy, token in ((a, token_a), (b, token_b)):
            created = httpx.post(
                f"{proxy.url}/endpointConnections", json=chat_connection(upstream_url, authToken=token)
            )
            assert created.status_code == 201
        text = f"{token_a} {token_b}"
        assert a.runtime.redactor.redact(text) == f"{MASK} {token_b}"
        assert b.runtime.redactor.redact(text) == f"{token_a} {MASK}"


@pytest.mark.parametrize("encoding", sorted(ECHOES))
def test_every_echo_the_test_upstream_sends_is_caught(encoding: str) -> None:
    """The end-to-end test's echoes, here without a server: each one is found and masked."""
    secret = 'cAnary/Tok+en "q" \\ end'
    body = ECHOES[encoding](secret)
    assert revealed(secret, body) != []  # unmasked, the reading shows it
    assert revealed(secret, redactor_of(secret).redact_bytes(body)) == []


def test_test_connection_credentials_are_forgotten_after_the_call_and_kept_nowhere(
    tmp_path: Path, upstream_url: str
) -> None:
    throwaway, override = 'throwaway "token" 1', "override/token+2"
    echo = f"{upstream_url}/echo-auth/json-escaped"
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        stored = client.post("/endpointConnections", json=chat_connection(upstream_url, url=echo)).json()
        for body, token in (
            (chat_connection(upstream_url, name="try", url=echo, authToken=throwaway), throwaway),
            ({"id": stored["id"], "authToken": override}, override),  # an override is as throwaway
        ):
            answer = client.post("/endpointConnections/testConnection", json=body).json()
            assert answer["extractedOutput"] == {"output": f"seen {MASK}"}, answer
            assert not proxy.runtime.redactor.knows(token)
        assert proxy.runtime.redactor.knows(TEST_TOKEN)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".yaml" for p in files) and any(p.name == "proxy.db" for p in files)
    assert not [
        (p, revealed(t, p.read_bytes())) for p in files for t in (throwaway, override) if revealed(t, p.read_bytes())
    ]


def test_update_and_delete_forget_old_secrets_but_not_one_another_connection_uses(
    tmp_path: Path, upstream_url: str
) -> None:
    shared, new = "shared-token-1", "a-new-token-2"
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        redactor = proxy.runtime.redactor
        a, b = (
            client.post("/endpointConnections", json=chat_connection(upstream_url, name=n, authToken=shared)).json()
            for n in ("a", "b")
        )
        assert client.patch(f"/endpointConnections/{a['id']}", json={"authToken": new}).status_code == 200
        assert redactor.knows(new) and redactor.knows(shared)  # b still uses it
        client.delete(f"/endpointConnections/{b['id']}")
        assert not redactor.knows(shared) and redactor.knows(new)
        client.delete(f"/endpointConnections/{a['id']}")
        assert not redactor.knows(new)
