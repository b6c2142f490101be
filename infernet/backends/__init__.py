"""backends package: one adapter per inference engine, auto-selection, the embedded default.

Modules:
- ``base``: the `Backend` protocol and the records it exchanges (requests, deltas, usage,
  models, pull progress, capabilities).
- ``engines``: the external engines (Ollama, vLLM, SGLang, MAX, llama.cpp), probe order,
  ports, env vars, model naming.
- ``select``: `open_backend` — probe, honour overrides, fall back to the embedded engine.
- ``ollama``: Ollama's native API (chat NDJSON, pull, delete, ps).
- ``openai_compat``: the OpenAI-compatible family (vLLM, SGLang, MAX, llama.cpp/llama-swap);
  ``sse``: the incremental decoder of their ``text/event-stream`` answers.
- ``instances``: several vLLM instances, one model each, behind one `Backend`.
- ``embedded``, ``embedded_server``, ``qa_prompt``: the embedded llama.cpp engine and its
  base-model prompt template; ``supervisor``: restarts it with backoff.
- ``fit``: the VRAM rule of thumb; ``inventory``: served models, weights hashes.
- ``catalog``: the well-known models (size, tier, name per engine) and `recommend`.
- ``transport``: httpx failures → `BackendError` codes.

Nothing is imported here, so importing one adapter does not load the others.
"""

__all__: list[str] = []
