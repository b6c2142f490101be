"""The question/answer prompt template that makes a base model (no chat template) answer.

Owns: rendering a `ChatRequest` into a raw completion prompt for the embedded Gemma 3 270M
base model, the stop strings and sampling defaults that end its answers cleanly, and the
cosmetic whitespace trimming of its streamed answer (DESIGN.md "Backends";
shared/notes/embedded-engine.md).

Template::

    <system text>            (system/developer messages, as plain paragraphs)

    Question: <user text>
    Answer: <assistant text>
    Question: <user text>
    Answer:                  (the model continues here)

Invariants:
- The prompt always ends with ``Answer:``, or with ``Answer: <text>`` when the last message is
  an assistant prefix to continue.
- Stop strings are `QA_STOPS` followed by the request's own, without duplicates.
- Defaults only fill what the request left out: ``max_tokens`` → `DEFAULT_MAX_TOKENS` so a base
  model cannot ramble forever; ``temperature`` → 0 (greedy), measured to be the only setting
  where the 270M model answers short factual questions reliably (" Paris", " Blue").
- `trim_answer` changes whitespace only at the very start and very end of the answer and never
  touches `Usage`: token counts stay the engine's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Final

from infernet.backends.base import ChatMessage, ChatRequest, StreamItem, TextDelta
from infernet.backends.openai_compat import CompletionPrompt

__all__ = ["DEFAULT_MAX_TOKENS", "QA_STOPS", "format_qa_prompt", "trim_answer"]

DEFAULT_MAX_TOKENS: Final = 128
# "\nQuestion:" and "\nAnswer:" end a turn; a blank line or <start_of_image> (which the
# base model emits as a document separator) mean it has moved on to unrelated text.
QA_STOPS: Final = ("\nQuestion:", "\nAnswer:", "\n\n", "<start_of_image>")
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def format_qa_prompt(
    request: ChatRequest, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> CompletionPrompt:
    """Render ``request`` with the question/answer template (see the module docstring)."""
    parts = [_render(message) for message in request.messages]
    ends_with_prefix = bool(request.messages) and request.messages[-1].role == "assistant"
    if ends_with_prefix:
        parts[-1] = parts[-1].rstrip("\n")
    else:
        parts.append("Answer:")
    stops = tuple(dict.fromkeys((*QA_STOPS, *request.stop)))
    return CompletionPrompt(
        prompt="".join(parts),
        stop=stops,
        max_tokens=request.max_tokens if request.max_tokens is not None else default_max_tokens,
        temperature=request.temperature if request.temperature is not None else 0.0,
    )


def _render(message: ChatMessage) -> str:
    """Render one message as a template line (or a paragraph, for system text)."""
    text = message.content.strip()
    if message.role in _SYSTEM_ROLES:
        return f"{text}\n\n"
    if message.role == "assistant":
        return f"Answer: {text}\n"
    return f"Question: {text}\n"


async def trim_answer(
    stream: AsyncGenerator[StreamItem, None],
) -> AsyncGenerator[StreamItem, None]:
    """Pass ``stream`` through with leading and trailing whitespace of the answer removed.

    The template leaves a space after ``Answer:`` that the model's first token repeats
    (" Paris"), and llama.cpp streams the newline that began a stop string ("\\nQuestion:")
    even though it drops it from non-streamed answers. Trailing whitespace of each delta is
    held back until more text follows, so only the answer's final whitespace is dropped.

    Cancel-safe: closing this iterator closes ``stream``.
    """
    started = False
    pending = ""
    async with aclosing(stream) as items:
        async for item in items:
            if not isinstance(item, TextDelta):
                yield item
                continue
            text = pending + item.text
            if not started:
                text = text.lstrip()
            body = text.rstrip()
            pending = text[len(body) :]
            if body:
                started = True
                yield TextDelta(text=body)
