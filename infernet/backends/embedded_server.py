"""Child-process entry point that runs llama.cpp's HTTP server from the ``xllamacpp`` wheel.

Run as::

    python -m infernet.backends.embedded_server --model PATH --host 127.0.0.1 --port N \
        --threads T --parallel P --ctx C [--alias NAME] [--port-file PATH] [--parent-pid PID]

Owns: building ``xllamacpp.CommonParams`` and keeping ``xllamacpp.Server`` alive until
SIGTERM or SIGINT, then exiting with code 0 and no traceback. `infernet.backends.embedded`
starts and stops it. The engine runs in its own process so that a crash or hang in native
code cannot take the node down, and so that it can always be killed.

xllamacpp facts this relies on (measured with ``xllamacpp==2026.10.11549``):
- ``Server(params)`` blocks while it loads the model and binds the socket, then returns with
  the HTTP server running on background C++ threads; ``listening_address`` is then
  ``"http://HOST:PORT"``. ``port = 0`` lets the OS pick a free port, which avoids the race of
  picking one in the parent; the chosen port is written to ``--port-file``.
- A bad model path or a busy port raises ``RuntimeError("Failed to init server ...")``.
- Dropping the last reference runs ``~Server``, which stops the main loop and joins it.
- The server installs no signal handlers, so this module blocks SIGTERM/SIGINT before the
  server's threads exist (they inherit the mask) and takes them with ``sigtimedwait``.
- Its HTTP server closes the connection after a streamed response (see ``_NO_KEEPALIVE`` in
  `infernet.backends.openai_compat`); it accepts any ``model`` name in a request.
- Defaults worth knowing: ``n_ctx = 0`` (the model's 32768), ``use_jinja = True``,
  ``ui = True``, ``cache_ram_mib = 8192``, ``verbosity = 3`` (one log block per request).

The model: the Gemma 3 270M GGUF has no ``tokenizer.chat_template`` key in its metadata (read
from the GGUF v3 header: 33 keys, ``general.*``, ``gemma3.*`` and ``tokenizer.ggml.*`` only). It
is a base model, so jinja is off and the adapter sends raw prompts to ``/v1/completions``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Final

__all__ = ["build_params", "main"]

_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT}
# The host-RAM prompt cache defaults to 8 GiB; a 270M model needs a tiny fraction of that.
_PROMPT_CACHE_MIB: Final = 256
_PARENT_CHECK_INTERVAL: Final = 1.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infernet.backends.embedded_server")
    parser.add_argument("--model", required=True, type=Path, help="GGUF file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="concurrent slots")
    parser.add_argument("--ctx", type=int, default=4096, help="total context, split over slots")
    parser.add_argument("--alias", default=None, help="model name the API reports")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when it is gone")
    return parser.parse_args(argv)


def build_params(args: argparse.Namespace) -> object:
    """Return ``xllamacpp.CommonParams`` for the parsed command line."""
    import xllamacpp  # heavy native import: only in the child

    params = xllamacpp.CommonParams()
    params.model.path = str(args.model)
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.use_jinja = False  # base model, no template: the adapter renders the prompt
    params.ui = False
    params.cache_ram_mib = _PROMPT_CACHE_MIB
    if args.alias:
        params.model_alias = {args.alias}
    return params


def _write_port(port_file: Path, address: str) -> None:
    """Atomically write the port from ``http://host:port`` so the parent never reads half."""
    port = address.rstrip("/").rsplit(":", 1)[1]
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(port + "\n")
    os.replace(tmp, port_file)


def _wait_for_stop(parent_pid: int | None) -> str:
    """Block until SIGTERM/SIGINT, or until the parent process is gone; return which.

    Checking the parent once a second keeps an engine from outliving a node that was killed
    with SIGKILL. (PR_SET_PDEATHSIG would not do: trio forks from a worker thread, and the
    death signal fires when that thread exits.)
    """
    while True:
        info = signal.sigtimedwait(_SIGNALS, _PARENT_CHECK_INTERVAL)
        if info is not None:
            return signal.Signals(info.si_signo).name
        if parent_pid is not None and os.getppid() != parent_pid:
            return "parent process gone"


def main(argv: list[str] | None = None) -> int:
    """Run the engine until SIGTERM/SIGINT; return the process exit code."""
    args = _parse_args(argv)
    # Block before any server thread exists so every thread inherits the mask and the
    # signal stays pending for sigwait, even if it arrives while the model loads.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    import xllamacpp

    try:
        server = xllamacpp.Server(build_params(args))
    except RuntimeError as exc:
        print(f"embedded_server: engine failed to start: {exc}", file=sys.stderr, flush=True)
        return 2
    address = str(server.listening_address)
    print(f"embedded_server: listening on {address}", file=sys.stderr, flush=True)
    if args.port_file is not None:
        _write_port(args.port_file, address)
    reason = _wait_for_stop(args.parent_pid)
    print(f"embedded_server: {reason}, stopping", file=sys.stderr, flush=True)
    del server  # ~Server stops the HTTP loop and joins its threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
