"""Tests for coordinator.openai_api: request parsing, the job frame, and OpenAI response shapes.

Request bodies come from the real OpenAI SDK where possible (an ``httpx.MockTransport`` catches
what it sends), and responses are read back by the SDK, so a shape it rejects fails here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, get_args

import httpx
import openai
import pytest

from coordinator.openai_api import (
    MAX_TOKENS,
    BadRequest,
    ResponseMeta,
    completion_body,
    error_body,
    parse_chat_request,
    provenance_headers,
    sse,
    stream_chunk,
    to_job_request,
    usage_chunk,
)
from infernet.protocol.errors import ErrorCode, info
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import PublicKey, encode_npub

META = ResponseMeta(job_id="job-7", model="gemma3-270m", created=1_700_000_000,
                    node_pubkey="ab" * 32)
USER_HI = [{"role": "user", "content": "Hi"}]
PROVENANCE = {"job_id": "job-7", "node_pubkey": "ab" * 32,
              "node_npub": encode_npub(PublicKey.from_hex("ab" * 32)),
              "weights_hash": None, "receipt_id": None}


def body(**fields: Any) -> bytes:
    fields.setdefault("model", "gemma3-270m")
    fields.setdefault("messages", USER_HI)
    return json.dumps(fields).encode()


def sdk_client(handler: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    """An SDK client whose requests go to ``handler`` instead of the network."""
    # Recent SDKs annotate httpx2.Client but accept an httpx.Client, which older ones require.
    http_client: Any = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(
        api_key="inf_test",
        base_url="http://coordinator.test/v1",
        http_client=http_client,
        max_retries=0,
    )


# --- parsing what clients send -----------------------------------------------------------


def test_typical_sdk_body_round_trips_through_the_sdk() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        seen.append(request.content)
        req = parse_chat_request(request.content)
        job = to_job_request(req, "job-7")
        text = "|".join(m.content for m in job.messages)
        return httpx.Response(200, json=completion_body(META, text, "stop", 5, 2))

    with sdk_client(handler) as client:
        resp = client.chat.completions.create(
            model="gemma3-270m",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                             {"type": "text", "text": "there"}]},
            ],
            n=1,
            user="user-1",
            logprobs=False,
            temperature=0.5,
            stop=["\n"],
            max_completion_tokens=16,
            seed=7,
        )

    sent = json.loads(seen[0])
    assert {"n", "user", "logprobs"} <= sent.keys()  # the unknown fields really were sent
    assert resp.choices[0].message.content == "Be brief.|Hi there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.id == "chatcmpl-job-7"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (5, 2)
    assert resp.usage.total_tokens == 7
    assert resp.model_extra == {"infernet": PROVENANCE}


def test_parse_keeps_the_honoured_fields_and_ignores_openais_other_parameters() -> None:
    req = parse_chat_request(body(
        stream=True, stream_options={"include_usage": True, "future": 1}, max_tokens=32,
        temperature=0.2, top_p=0.95, stop="END", seed=3,
        n=1, user="u", logprobs=True, top_logprobs=2, tools=[{"type": "function"}],
        response_format={"type": "text"}, frequency_penalty=0.0, metadata={"k": "v"},
    ))
    assert req.model == "gemma3-270m"
    assert [(m.role, m.text()) for m in req.messages] == [("user", "Hi")]
    assert req.stream is True
    assert req.stream_options is not None
    assert req.stream_options.include_usage is True
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed) == (
        32, 0.2, 0.95, "END", 3
    )


@pytest.mark.parametrize("field", ["foo", "max_token", "Model", "prompt"])
def test_a_field_openai_does_not_define_is_a_bad_request(field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        parse_chat_request(body(**{field: 1}))


@pytest.mark.parametrize("n", [0, 2])
def test_only_one_choice_can_be_asked_for(n: int) -> None:
    with pytest.raises(BadRequest, match=r"\$\.n"):
        parse_chat_request(body(n=n))


def test_unknown_role_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="role"):
        parse_chat_request(body(messages=[{"role": "wizard", "content": "Hi"}]))


def test_huge_max_tokens_is_a_bad_request() -> None:
    parse_chat_request(body(max_tokens=MAX_TOKENS))
    with pytest.raises(BadRequest, match="max_tokens"):
        parse_chat_request(body(max_tokens=MAX_TOKENS + 1))


def test_provenance_headers_name_what_is_known() -> None:
    assert provenance_headers("job-7", None, None, None) == {"X-Infernet-Job": "job-7"}
    assert provenance_headers("job-7", "ab" * 32, "sha256:x", "cpr_1") == {
        "X-Infernet-Job": "job-7", "X-Infernet-Node": "ab" * 32,
        "X-Infernet-Weights": "sha256:x", "X-Infernet-Receipt": "cpr_1"}


def test_parse_defaults() -> None:
    req = parse_chat_request(body())
    assert req.stream is False
    assert req.stream_options is None
    assert (req.max_tokens, req.max_completion_tokens, req.temperature, req.top_p,
            req.stop, req.seed) == (None, None, None, None, None, None)


def test_content_as_a_list_of_parts_keeps_only_text_parts() -> None:
    req = parse_chat_request(body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe "},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        {"type": "text", "text": "this."},
    ]}]))
    assert req.messages[0].text() == "Describe this."


def test_null_or_missing_content_is_empty_text() -> None:
    req = parse_chat_request(body(messages=[
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user"},
    ]))
    assert [m.text() for m in req.messages] == ["", ""]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "empty"),
        (b"  \n\t", "empty"),
        (b"{", "malformed JSON"),
        (b"{'model': 'm'}", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[]", "object"),
        (b"null", "object"),
        (b"{}", "`model`"),
        (json.dumps({"messages": USER_HI}).encode(), "`model`"),
        (json.dumps({"model": "m"}).encode(), "`messages`"),
        (body(model=""), "$.model"),
        (body(model=7), "$.model"),
        (body(messages=[]), "$.messages"),
        (body(messages="Hi"), "$.messages"),
        (body(messages=[{"content": "Hi"}]), "`role`"),
        (body(temperature=3), "$.temperature"),
        (body(temperature=-0.1), "$.temperature"),
        (body(top_p=1.5), "$.top_p"),
        (body(max_tokens=0), "$.max_tokens"),
        (body(max_completion_tokens=-1), "$.max_completion_tokens"),
        (body(stop=5), "$.stop"),
        (body(stream="yes"), "$.stream"),
        (body(messages=[{"role": "user", "content": "x"}] * 1025), "$.messages"),
    ],
    ids=[
        "empty", "whitespace", "truncated", "single quotes", "not utf8", "array", "null",
        "empty object", "missing model", "missing messages", "empty model", "model not str",
        "empty messages", "messages not list", "message without role", "temperature 3",
        "negative temperature", "top_p over 1", "max_tokens 0", "negative max_completion",
        "stop int", "stream str", "too many messages",
    ],
)
def test_bad_requests_are_rejected_with_a_helpful_message(raw: bytes, needle: str) -> None:
    with pytest.raises(BadRequest) as excinfo:
        parse_chat_request(raw)
    assert needle in str(excinfo.value)


def test_temperature_message_names_the_bound() -> None:
    with pytest.raises(BadRequest, match=r"<= 2\.0 - at `\$\.temperature`"):
        parse_chat_request(body(temperature=3))


def test_bad_request_is_a_value_error() -> None:
    assert issubclass(BadRequest, ValueError)


def test_boundary_values_are_accepted() -> None:
    req = parse_chat_request(body(temperature=2, top_p=0, max_tokens=1))
    assert (req.temperature, req.top_p, req.max_tokens) == (2.0, 0.0, 1)


@pytest.mark.parametrize("field", ["seed", "max_tokens", "max_completion_tokens"])
def test_integers_the_job_frame_cannot_carry_are_bad_requests(field: str) -> None:
    with pytest.raises(BadRequest):
        parse_chat_request(body(**{field: 2**64}))


def test_deeply_nested_unknown_field_is_a_bad_request() -> None:
    raw = body()[:-1] + b', "extra": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(BadRequest):
        parse_chat_request(raw)


def test_invalid_utf8_in_a_string_field_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        parse_chat_request(b'{"model": "\xff", "messages": [{"role": "user", "content": "Hi"}]}')


# --- the job frame -------------------------------------------------------------------------


def test_to_job_request_maps_every_field() -> None:
    req = parse_chat_request(body(
        messages=[{"role": "system", "content": "S"},
                  {"role": "user", "content": [{"type": "text", "text": "U"}]}],
        max_tokens=10, temperature=0.3, top_p=0.8, stop=["a", "b"], seed=99,
    ))
    assert to_job_request(req, "job-7") == JobRequest(
        job_id="job-7",
        model="gemma3-270m",
        messages=(Message(role="system", content="S"), Message(role="user", content="U")),
        max_tokens=10,
        temperature=0.3,
        top_p=0.8,
        stop=("a", "b"),
        seed=99,
    )


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, ()), ("END", ("END",)), ([], ()), (["x"], ("x",)), (["\n", "User:"], ("\n", "User:"))],
)
def test_stop_string_or_list_becomes_a_tuple(stop: Any, expected: tuple[str, ...]) -> None:
    fields = {} if stop is None else {"stop": stop}
    assert to_job_request(parse_chat_request(body(**fields)), "j").stop == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"max_tokens": 5}, 5),
        ({"max_completion_tokens": 7}, 7),
        ({"max_tokens": 5, "max_completion_tokens": 7}, 7),
        ({"max_tokens": 9, "max_completion_tokens": 2}, 2),
    ],
)
def test_max_completion_tokens_takes_precedence(
    fields: dict[str, int], expected: int | None
) -> None:
    assert to_job_request(parse_chat_request(body(**fields)), "j").max_tokens == expected


# --- errors ----------------------------------------------------------------------------------


OPENAI_TYPES: dict[str, str] = {
    "unauthorized": "authentication_error",
    "bad_request": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "not_found": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "no_capacity": "server_error",
    "node_disconnected": "server_error",
    "timeout": "server_error",
    "internal_error": "server_error",
    "backend_unavailable": "server_error",
    "protocol_error": "server_error",
    "cancelled": "server_error",
}


def test_every_error_code_has_an_expected_type() -> None:
    assert set(OPENAI_TYPES) == set(get_args(ErrorCode))


@pytest.mark.parametrize("code", get_args(ErrorCode))
def test_error_body_shape(code: ErrorCode) -> None:
    got = error_body(code)
    assert got == {"error": {"code": code, "message": info(code).message,
                             "type": OPENAI_TYPES[code], "param": None}}
    assert got["error"]["message"]  # never empty


def test_error_body_custom_message() -> None:
    assert error_body("model_not_found", "no node serves llama9")["error"]["message"] == (
        "no node serves llama9"
    )
    assert error_body("timeout", "")["error"]["message"] == info("timeout").message


@pytest.mark.parametrize(
    ("code", "exc_type"),
    [
        ("unauthorized", openai.AuthenticationError),
        ("bad_request", openai.BadRequestError),
        ("model_not_found", openai.NotFoundError),
        ("rate_limited", openai.RateLimitError),
        ("no_capacity", openai.InternalServerError),
    ],
)
def test_the_sdk_turns_error_bodies_into_typed_errors(
    code: ErrorCode, exc_type: type[openai.APIStatusError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(info(code).status, json=error_body(code, f"say {code}"))

    with sdk_client(handler) as client, pytest.raises(exc_type) as excinfo:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert excinfo.value.code == code
    assert excinfo.value.type == OPENAI_TYPES[code]
    assert f"say {code}" in excinfo.value.message


# --- server-sent events ---------------------------------------------------------------------


def test_sse_frames_a_dict_as_compact_json() -> None:
    assert sse({"a": 1, "b": [True, None]}) == b'data: {"a":1,"b":[true,null]}\n\n'


def test_sse_passes_a_string_through() -> None:
    assert sse("[DONE]") == b"data: [DONE]\n\n"


def test_sse_keeps_newlines_and_unicode_inside_one_data_line() -> None:
    event = sse({"text": "line1\nline2\r\n\n✓"})
    assert event.endswith(b"\n\n")
    assert event.count(b"\n") == 2  # the payload's newlines are JSON-escaped
    assert event.startswith(b"data: ")
    assert json.loads(event[len(b"data: "):].decode()) == {"text": "line1\nline2\r\n\n✓"}


# --- response shapes ------------------------------------------------------------------------


def test_completion_body_shape() -> None:
    assert completion_body(META, "Hello!", "length", 11, 4) == {
        "id": "chatcmpl-job-7",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gemma3-270m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                     "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
        "infernet": PROVENANCE,
    }


def test_stream_chunk_shape() -> None:
    assert stream_chunk(META, {"content": "Hel"}) == {
        "id": "chatcmpl-job-7",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gemma3-270m",
        "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None,
                     "logprobs": None}],
        "infernet": PROVENANCE,
    }
    assert stream_chunk(META, {}, "stop")["choices"][0]["finish_reason"] == "stop"


def test_usage_chunk_shape() -> None:
    assert usage_chunk(META, 8, 13) == {
        "id": "chatcmpl-job-7",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gemma3-270m",
        "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": 13, "total_tokens": 21},
        "infernet": PROVENANCE,
    }


def test_the_sdk_reads_a_stream_of_chunks_with_usage() -> None:
    events = [
        sse(stream_chunk(META, {"role": "assistant", "content": ""})),
        sse(stream_chunk(META, {"content": "Hel"})),
        sse(stream_chunk(META, {"content": "lo"})),
        sse(stream_chunk(META, {}, "stop")),
        sse(usage_chunk(META, 3, 2)),
        sse("[DONE]"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert parse_chat_request(request.content).stream is True
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=b"".join(events))

    with sdk_client(handler) as client:
        chunks = list(client.chat.completions.create(
            model="gemma3-270m", messages=[{"role": "user", "content": "Hi"}], stream=True,
            stream_options={"include_usage": True},
        ))

    assert [c.id for c in chunks] == ["chatcmpl-job-7"] * 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, None, "stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 5
