"""All protocol benchmarks in one command: ``python -m bench.protocol [--quick]``.

Runs ``bench.frame_codec``, ``bench.announce_verify`` and ``bench.protocol_crypto`` in turn;
each prints its own ratios against a baseline measured in the same run. (No ``main`` here on
purpose: ``python -m bench`` already runs those three modules, and would run them twice.)
"""

from __future__ import annotations

import sys

from bench import announce_verify, frame_codec, protocol_crypto


def run_all(argv: list[str]) -> int:
    """Run the three protocol benchmarks with the same arguments; non-zero if one failed."""
    failed = 0
    for module in (frame_codec, announce_verify, protocol_crypto):
        print(f"\n=== {module.__name__} ===", flush=True)
        failed += bool(module.main(list(argv)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1:]))
