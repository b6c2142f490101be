"""Payout address formats: is this string an address that can receive on that network?

Owns: the syntactic check of a payout address per network (``infernet payout set``; the
networks are ``infernet.protocol.pricing.NETWORKS``):

- EVM networks (ethereum, base, polygon, arbitrum, bsc): ``0x`` + 40 hex digits; a
  mixed-case address must carry a valid EIP-55 checksum (Keccak-256 from pycryptodome);
- solana: base58 of a 32-byte public key;
- bitcoin: segwit ``bc1…`` (BIP-173 bech32 for version 0 with a 20- or 32-byte program,
  BIP-350 bech32m for versions 1-16) or base58check P2PKH ``1…`` / P2SH ``3…``;
- dogecoin: base58check with version 0x1e (``D…``) or 0x16 (``9…``/``A…``);
- xrp: base58check in Ripple's alphabet, version 0 (``r…``).

The ``bech32`` package (1.2.0, the newest) predates bech32m, so the bech32m checksum is
checked here with that package's own polymod; base58 and base58check come from ``base58``.

Invariants: pure (no I/O); `check_address` raises only `AddressError`, whatever the text.
"""

from __future__ import annotations

import re
from typing import Final

import base58
import bech32
from Crypto.Hash import keccak

from infernet.protocol.errors import ErrorCode, InfernetError

__all__ = ["AddressError", "check_address"]

_EVM: Final = frozenset({"ethereum", "base", "polygon", "arbitrum", "bsc"})
_EVM_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_BECH32M_CONST: Final = 0x2BC830A3
_MAX_LEN: Final = 128


class AddressError(InfernetError):
    """Raised when a payout address is not valid for its network; fix the address or the
    ``--network``."""

    code: ErrorCode = "bad_request"


def check_address(network: str, address: str) -> str:
    """Return ``address`` (trimmed) if it can receive on ``network``.

    Raises:
        AddressError: wrong format or checksum for that network, or an unknown network.
    """
    addr = address.strip() if isinstance(address, str) else ""
    if not addr or len(addr) > _MAX_LEN:
        raise AddressError("a payout address must be 1-128 characters")
    if network in _EVM:
        _check_evm(addr, network)
    elif network == "solana":
        _check_solana(addr)
    elif network == "bitcoin":
        _check_bitcoin(addr)
    elif network == "dogecoin":
        _check_base58check(addr, {0x1E, 0x16}, base58.BITCOIN_ALPHABET, "Dogecoin")
    elif network == "xrp":
        _check_base58check(addr, {0x00}, base58.RIPPLE_ALPHABET, "XRP")
    else:
        raise AddressError(f"no address format known for network {network!r}")
    return addr


def _check_evm(addr: str, network: str) -> None:
    if _EVM_RE.fullmatch(addr) is None:
        raise AddressError(f"{addr!r} is not an address on {network}: expected 0x followed by "
                           "40 hex digits")
    digits = addr[2:]
    if digits in (digits.lower(), digits.upper()):
        return  # no checksum to check
    digest = keccak.new(digest_bits=256, data=digits.lower().encode()).hexdigest()
    for ch, nibble in zip(digits, digest[:40], strict=True):
        if ch.isalpha() and ch.isupper() != (int(nibble, 16) >= 8):
            raise AddressError(f"{addr!r} has a bad EIP-55 checksum (mixed case): copy the "
                               "address again, or give it all in lower case")


def _check_solana(addr: str) -> None:
    try:
        raw = base58.b58decode(addr)
    except ValueError:
        raw = b""
    if len(raw) != 32 or base58.b58encode(raw).decode() != addr:
        raise AddressError(f"{addr!r} is not a Solana address: expected the base58 form of "
                           "a 32-byte public key")


def _check_bitcoin(addr: str) -> None:
    if addr.lower().startswith("bc1"):
        if not _valid_segwit(addr):
            raise AddressError(f"{addr!r} is not a valid bc1 (segwit) Bitcoin address: bad "
                               "checksum, length or witness version")
        return
    _check_base58check(addr, {0x00, 0x05}, base58.BITCOIN_ALPHABET, "Bitcoin")


def _valid_segwit(addr: str) -> bool:
    if addr != addr.lower() and addr != addr.upper():
        return False
    hrp, data = bech32.bech32_decode(addr)  # checks the bech32 (version 0) checksum
    if hrp is None:
        hrp, data = _bech32m_decode(addr.lower())
        if hrp is None or not data or data[0] == 0:
            return False
    elif not data or data[0] != 0:
        return False  # a version 1+ program must use bech32m (BIP-350)
    if hrp != "bc":
        return False
    program = bech32.convertbits(data[1:], 5, 8, False)
    if program is None or not 2 <= len(program) <= 40 or data[0] > 16:
        return False
    return data[0] != 0 or len(program) in (20, 32)


def _bech32m_decode(addr: str) -> tuple[str | None, list[int]]:
    """(hrp, data without checksum) when ``addr`` carries a valid bech32m checksum."""
    pos = addr.rfind("1")
    if pos < 1 or pos + 7 > len(addr) or len(addr) > 90:
        return None, []
    if any(c not in bech32.CHARSET for c in addr[pos + 1:]):
        return None, []
    hrp, data = addr[:pos], [bech32.CHARSET.find(c) for c in addr[pos + 1:]]
    if bech32.bech32_polymod(bech32.bech32_hrp_expand(hrp) + data) != _BECH32M_CONST:
        return None, []
    return hrp, data[:-6]


def _check_base58check(addr: str, versions: set[int], alphabet: bytes, name: str) -> None:
    try:
        raw = base58.b58decode_check(addr, alphabet=alphabet)
    except ValueError:
        raw = b""
    if len(raw) != 21 or raw[0] not in versions:
        raise AddressError(f"{addr!r} is not a valid {name} address (base58check: bad "
                           "characters, checksum or version)")
