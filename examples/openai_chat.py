"""Chat with an Infernet network through the official OpenAI SDK — no Infernet code needed.

Run `make run` (or `infernet up`) in another terminal, export the two lines it prints
(OPENAI_BASE_URL, OPENAI_API_KEY), then:

    python examples/openai_chat.py "What is the capital of France?"

It asks once without streaming, then once streaming, and prints which node answered.
"""

from __future__ import annotations

import sys

from openai import OpenAI


def main() -> int:
    question = sys.argv[1] if len(sys.argv) > 1 else "What is the capital of France?"
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = client.models.list().data[0].id

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}])
    reply = raw.parse()
    print(f"[{model}] {reply.choices[0].message.content}")
    print(f"  usage: {reply.usage.prompt_tokens if reply.usage else '?'} prompt + "
          f"{reply.usage.completion_tokens if reply.usage else '?'} completion tokens; "
          f"served by node {raw.headers.get('x-infernet-node', '?')[:16]}…")

    print(f"[{model}, streaming] ", end="", flush=True)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], stream=True,
        stream_options={"include_usage": True})
    for chunk in stream:
        for choice in chunk.choices:
            print(choice.delta.content or "", end="", flush=True)
        if chunk.usage:
            print(f"\n  usage: {chunk.usage.completion_tokens} completion tokens")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
