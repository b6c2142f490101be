"""Where the shared test vectors live, for every tests/protocol module that reads them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest


def vectors_path() -> Path:
    """Return $INFERNET_VECTORS, else ../shared/vectors beside the repository root."""
    override = os.environ.get("INFERNET_VECTORS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def load_json(name: str) -> Any:
    """Load one vector file; a missing directory fails the test (never skips it)."""
    path = vectors_path()
    if not path.is_dir():
        pytest.fail(f"test vectors not found at {path}; set INFERNET_VECTORS to the vectors dir")
    return json.loads((path / name).read_text(encoding="utf-8"))


def load_json_or_empty(name: str) -> Any:
    """Load a vector file at collection time (for parametrize); None if it is missing.

    A test that uses this must also check the file exists, so a missing file still fails.
    """
    path = vectors_path() / name
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
