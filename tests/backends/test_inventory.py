"""Served models against the engine: mismatches, fit refusals, weights hashes, watching."""

from __future__ import annotations

import hashlib
import logging
from contextlib import aclosing
from pathlib import Path

import trio

from infernet.backends.base import ModelInfo
from infernet.backends.inventory import (
    build_inventory,
    canonical_name,
    read_served_models,
    watch_served_models,
    weights_hash,
)
from infernet.backends.ollama import OllamaBackend
from tests.backends.fake_ollama import FakeOllama

GB = 1_000_000_000


async def test_empty_served_models_serves_everything(fake_ollama: FakeOllama) -> None:
    backend = OllamaBackend(fake_ollama.url)
    try:
        inventory = await build_inventory(backend, (), 24 * GB)
    finally:
        await backend.aclose()
    assert inventory.names == {"qwen2.5:7b", "llama3.2:3b"}
    assert all(m.weights_hash.startswith("sha256:") for m in inventory.serve)
    assert inventory.problems() == []


async def test_mismatches_and_refusals_are_warned(fake_ollama: FakeOllama, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="infernet.backends")
    backend = OllamaBackend(fake_ollama.url)
    try:
        inventory = await build_inventory(
            backend, ("qwen2.5:7b", "mistral", "llama3.2:3b"), 4 * GB
        )
    finally:
        await backend.aclose()
    # weights + 20 % + 1 GiB: 2.0 GB → 3.5 GB fits in 4 GB; 4.7 GB → 6.7 GB does not
    assert inventory.names == {"llama3.2:3b"}
    assert [m.name for m in inventory.refused] == ["qwen2.5:7b"]
    assert inventory.missing == ("mistral",)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("refusing to advertise qwen2.5:7b: qwen2.5:7b needs ~6.2 GiB "
                            "(4.4 GiB weights + 1.9 GiB for KV cache and runtime): does not "
                            "fit, 2.5 GiB more than 3.7 GiB")
               for m in messages)  # fmt: skip
    assert any("served_models lists mistral but ollama does not have it" in m for m in messages)


async def test_unlisted_models_are_not_advertised(fake_ollama: FakeOllama) -> None:
    backend = OllamaBackend(fake_ollama.url)
    try:
        inventory = await build_inventory(backend, ("qwen2.5:7b",), None)
    finally:
        await backend.aclose()
    assert inventory.names == {"qwen2.5:7b"} and inventory.unlisted == ("llama3.2:3b",)


def test_ollama_names_resolve_like_ollama() -> None:
    assert canonical_name("llama3", "ollama") == "llama3:latest"
    assert canonical_name("user/model", "ollama") == "user/model:latest"
    assert canonical_name("qwen2.5:7b", "ollama") == "qwen2.5:7b"
    assert canonical_name("Qwen/Qwen2.5-7B", "huggingface") == "Qwen/Qwen2.5-7B"


async def test_weights_hash_prefers_the_engine_digest(tmp_path: Path) -> None:
    path = tmp_path / "w.gguf"
    path.write_bytes(b"weights")
    model = ModelInfo(name="m", digest="sha256:abc", path=str(path))
    assert await weights_hash(model) == "sha256:abc"


async def test_weights_hash_of_a_local_file_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "w.gguf"
    path.write_bytes(b"weights")
    cache = tmp_path / "cache" / "hashes.json"
    expected = "sha256:" + hashlib.sha256(b"weights").hexdigest()
    assert await weights_hash(ModelInfo(name="m", path=str(path)), cache_file=cache) == expected
    assert expected in cache.read_text()
    # a cached value is trusted while path, size and mtime match
    cache.write_text(cache.read_text().replace(expected, "sha256:cached"))
    assert await weights_hash(ModelInfo(name="m", path=str(path)), cache_file=cache) == (
        "sha256:cached"
    )


async def test_weights_hash_of_a_model_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "Qwen2.5-7B"
    model_dir.mkdir()
    (model_dir / "model-00001.safetensors").write_bytes(b"a")
    (model_dir / "model-00002.safetensors").write_bytes(b"b")
    (model_dir / "README.md").write_text("not weights")
    first = await weights_hash(ModelInfo(name="q", path=str(model_dir)))
    (model_dir / "README.md").write_text("changed docs")
    assert await weights_hash(ModelInfo(name="q", path=str(model_dir))) == first
    (model_dir / "model-00002.safetensors").write_bytes(b"c")
    assert await weights_hash(ModelInfo(name="q", path=str(model_dir))) != first


async def test_weights_hash_from_the_huggingface_cache(tmp_path: Path) -> None:
    refs = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a09a35458c702b33eeacc393d103063234e8bc28\n")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    model = ModelInfo(name="Qwen/Qwen2.5-7B-Instruct")
    assert await weights_hash(model, "huggingface", env=env) == (
        "hf:Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28"
    )
    assert await weights_hash(ModelInfo(name="Qwen/Other"), "huggingface", env=env) == ""
    assert await weights_hash(ModelInfo(name="alias-only")) == ""


async def test_watch_served_models_yields_each_change(tmp_path: Path, autojump_clock) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"port": 1, "served_models": ["a"]}')
    writes = [
        '{"port": 2, "served_models": ["a"]}',  # another key changed: nothing to report
        "{half-writ",  # a writer in progress: skipped until the next poll
        '{"served_models": ["a", "b"]}',
        '{"served_models": []}',
    ]

    async def writer() -> None:
        await trio.sleep(0.5)  # between polls (every 1 s of virtual time)
        for text in writes:
            config.write_text(text)
            await trio.sleep(2.0)

    seen: list[tuple[str, ...]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async with aclosing(watch_served_models(config, interval=1.0)) as changes:
            async for value in changes:
                seen.append(value)
                if len(seen) == 3:
                    break
    assert seen == [("a",), ("a", "b"), ()]
    assert trio.current_time() >= 6.5
    assert read_served_models(tmp_path / "missing.json") == ()
