"""The question/answer template for the embedded base model, and its answer trimming."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from infernet.backends.base import ChatMessage, ChatRequest, StreamItem, TextDelta, Usage
from infernet.backends.qa_prompt import (
    DEFAULT_MAX_TOKENS,
    QA_STOPS,
    format_qa_prompt,
    trim_answer,
)


def request(*turns: tuple[str, str], **kwargs: object) -> ChatRequest:
    messages = tuple(ChatMessage(role=role, content=content) for role, content in turns)
    return ChatRequest(model="gemma3-270m", messages=messages, **kwargs)  # type: ignore[arg-type]


def test_single_question() -> None:
    rendered = format_qa_prompt(request(("user", "What is the capital of France?")))
    assert rendered.prompt == "Question: What is the capital of France?\nAnswer:"
    assert rendered.stop == QA_STOPS
    assert rendered.stop[0] == "\nQuestion:"
    assert rendered.max_tokens == DEFAULT_MAX_TOKENS == 128
    assert rendered.temperature == 0.0


def test_system_text_then_turns() -> None:
    rendered = format_qa_prompt(
        request(
            ("system", "  Answer in one word. "),
            ("user", "Capital of France?"),
            ("assistant", "Paris"),
            ("user", " And of Italy?\n"),
        )
    )
    assert rendered.prompt == (
        "Answer in one word.\n\n"
        "Question: Capital of France?\n"
        "Answer: Paris\n"
        "Question: And of Italy?\n"
        "Answer:"
    )


def test_trailing_assistant_message_is_continued() -> None:
    rendered = format_qa_prompt(request(("user", "Count to three."), ("assistant", "One, two,")))
    assert rendered.prompt == "Question: Count to three.\nAnswer: One, two,"


def test_request_values_win_over_defaults() -> None:
    rendered = format_qa_prompt(
        request(("user", "Hi"), max_tokens=7, temperature=0.9, stop=("END", "\nQuestion:"))
    )
    assert (rendered.max_tokens, rendered.temperature) == (7, 0.9)
    assert rendered.stop == (*QA_STOPS, "END")  # the request's own, once, after ours


def test_default_max_tokens_is_configurable() -> None:
    assert format_qa_prompt(request(("user", "Hi")), default_max_tokens=16).max_tokens == 16


async def _items(*items: StreamItem) -> AsyncGenerator[StreamItem, None]:
    for item in items:
        yield item


USAGE = Usage(prompt_tokens=13, completion_tokens=4)


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([" Paris", "\n"], ["Paris"]),  # llama.cpp streams the "\n" of "\nQuestion:"
        ([" ", " Paris", " is", " nice.", "\n", " "], ["Paris", " is", " nice."]),
        (["Line one", "\n", "line two"], ["Line one", "\nline two"]),
        (["\n", " "], []),
        ([], []),
    ],
)
async def test_trim_answer_strips_only_the_outer_whitespace(
    deltas: list[str], expected: list[str]
) -> None:
    stream = trim_answer(_items(*(TextDelta(text=t) for t in deltas), USAGE))
    out = [item async for item in stream]
    assert out == [*(TextDelta(text=t) for t in expected), USAGE]


async def test_trim_answer_closes_its_source() -> None:
    source = _items(TextDelta(text="a"), TextDelta(text="b"), USAGE)
    stream = trim_answer(source)
    assert await stream.__anext__() == TextDelta(text="a")
    await stream.aclose()
    assert source.ag_frame is None  # finished: closed, not left suspended
