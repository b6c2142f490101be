"""Node configuration and key files under ``INFERNET_HOME``.

Owns: where things live (``~/.config/infernet`` unless ``INFERNET_HOME`` says otherwise),
the config schema (a frozen msgspec Struct; unknown keys are refused so typos surface),
and the node key file. Both files are written 0600.

Invariants: config errors name the file, the key and the fix; nothing here runs at import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Final

import msgspec

from infernet.backends.engines import BackendChoice
from infernet.protocol.address import AddressError, check_address
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import KeyFormatError, SecretKey
from infernet.protocol.ports import NODE_P2P_PORT
from infernet.protocol.pricing import Coin, Network, PricingError, payout_network

__all__ = [
    "BackendKind",
    "ConfigError",
    "NodeConfig",
    "PayoutAddress",
    "config_path",
    "home_dir",
    "init_home",
    "load_config",
    "load_node_key",
    "loose_permissions",
    "save_config",
]

CONFIG_FILE: Final = "config.json"
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
NODE_KEY_FILE: Final = "keys/node.key"

# "auto" probes the running engines in the book's order and falls back to "embedded"
# (infernet.backends.select); any other value names the engine to use.
BackendKind = BackendChoice


class ConfigError(InfernetError):
    """Raised when a config or key file is missing, unreadable or invalid; the message says
    which file and key, and how to fix it."""

    code = "bad_request"


class PayoutAddress(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where earnings in ``coin`` on ``network`` are paid (``infernet payout set``)."""

    coin: Coin
    network: Network
    address: str

    def __post_init__(self) -> None:
        # A hand-edited config is held to the same rules as `infernet payout set`.
        try:
            payout_network(self.coin, self.network)
            check_address(self.network, self.address)
        except (AddressError, PricingError) as exc:
            raise ValueError(str(exc)) from None


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an operator can set for a node."""

    port: Port = NODE_P2P_PORT
    listen_host: str = "0.0.0.0"
    bootstrap: tuple[str, ...] = ()
    advertise: bool = True
    mdns: bool = True  # find and dial peers on the LAN (infernet.mesh.mdns); --no-mdns
    # Operating the daemon (infernet.node.control, infernet.node.runfiles): the local control
    # port (0 = any free port; the CLI finds it in run/control.json), the log file ("" = the
    # default location), the coordinator the CLI and doctor talk to, and how long a stop
    # waits for jobs in flight.
    control_port: Port = 46339
    log_file: str = ""
    coordinator_url: str = ""
    drain_timeout: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Backends (infernet.backends.select). backend_url: where the chosen engine listens
    # (with "auto": one URL to identify); <engine>_host: where each engine listens when
    # probing, else its own env var (OLLAMA_HOST...), else localhost on its default port.
    backend: BackendKind = "auto"
    backend_url: str = ""
    ollama_host: str = ""
    vllm_host: str = ""
    sglang_host: str = ""
    max_host: str = ""
    llamacpp_host: str = ""
    vllm_instances: tuple[str, ...] = ()  # "URL" or "MODEL=URL", one vLLM per model
    probe_timeout: float = 1.0
    served_models: tuple[str, ...] = ()  # empty: everything the engine lists
    engine_threads: int = 2
    engine_slots: int = 2
    engine_ctx: int = 4096
    engine_supervise: bool = True
    engine_health_interval: float = 5.0
    model_cache: str = ""
    price_per_1k_output: float = 0.0
    # One address per (coin, network); `infernet payout` pays each settlement chain to the
    # USDC address on it (infernet.cli.payout).
    payout_addresses: tuple[PayoutAddress, ...] = ()


def home_dir(env: dict[str, str] | None = None) -> Path:
    """``INFERNET_HOME`` or ``~/.config/infernet``."""
    env = dict(os.environ) if env is None else env
    home = env.get("INFERNET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".config" / "infernet"


def config_path(home: Path) -> Path:
    """Path of the config file under ``home``."""
    return home / CONFIG_FILE


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def save_config(home: Path, config: NodeConfig) -> Path:
    """Write ``config`` as pretty JSON, mode 0600; return its path."""
    path = config_path(home)
    _write_private(path, msgspec.json.format(msgspec.json.encode(config), indent=2) + b"\n")
    return path


def load_config(home: Path, env: dict[str, str] | None = None) -> NodeConfig:
    """Read the config file (defaults when missing), then apply ``INFERNET_<KEY>`` overrides.

    Raises:
        ConfigError: the file is not valid JSON, has a bad or unknown key, or an
            environment override has the wrong type.
    """
    path = config_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b"{}"
    try:
        config = msgspec.json.decode(data, type=NodeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}; fix the key or delete it to use the default") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix or delete the file") from None
    return _apply_env(config, dict(os.environ) if env is None else env)


def _apply_env(config: NodeConfig, env: dict[str, str]) -> NodeConfig:
    raw = msgspec.to_builtins(config)
    for name in raw:
        value = env.get(f"INFERNET_{name.upper()}")
        if value is None:
            continue
        raw[name] = value.split(",") if isinstance(raw[name], (list, tuple)) else value
        try:
            msgspec.convert(raw, NodeConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"environment INFERNET_{name.upper()}={value!r}: {exc}") from None
    return msgspec.convert(raw, NodeConfig, strict=False)


def loose_permissions(path: Path) -> str:
    """Describe why ``path`` is not private (group/other bits set), or "" when it is 0600-ish.

    Always "" on platforms without POSIX modes.
    """
    if os.name != "posix":
        return ""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077 == 0:
        return ""
    return f"accessible by other users (mode {mode:04o})"


def load_node_key(home: Path) -> SecretKey:
    """Read the node's secret key.

    Raises:
        ConfigError: the key file is missing (run ``infernet init``), corrupt, or readable
            by other users.
    """
    path = home / NODE_KEY_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: run `infernet init` first") from None
    loose = loose_permissions(path)
    if loose:
        # Like ssh with a private key: a key others can read is refused, not used.
        raise ConfigError(f"{path} is {loose}: run `chmod 600 {path}`")
    try:
        return SecretKey.from_hex(text)
    except KeyFormatError as exc:
        raise ConfigError(
            f"{path}: {exc}; restore it from a backup or run `infernet init --force`"
        ) from None


def init_home(home: Path, *, force: bool = False) -> tuple[SecretKey, bool]:
    """Create the node key and a default config if missing; return (key, created).

    Idempotent: an existing key is kept unless ``force``.

    Raises:
        ConfigError: an existing key file is corrupt (and ``force`` is not set).
    """
    key_path = home / NODE_KEY_FILE
    if key_path.exists() and not force:
        return load_node_key(home), False
    # even_y: the libp2p peer id then equals the one derived from the x-only pubkey.
    key = SecretKey.generate().even_y()
    _write_private(key_path, key.hex().encode() + b"\n")
    if not config_path(home).exists():
        save_config(home, NodeConfig())
    return key, True
