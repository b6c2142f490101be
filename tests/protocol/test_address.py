"""Payout address formats per network, and the coins and networks an operator can name."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infernet.protocol.address import AddressError, check_address
from infernet.protocol.pricing import CHAINS, COIN_NETWORKS, PricingError, payout_network

VALID = [
    ("ethereum", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),  # EIP-55 example
    ("base", "0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359"),  # all lower case: no checksum
    ("bsc", "0xFB6916095CA1DF60BB79CE92CE3EA74C37C5D359"),
    ("solana", "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV"),
    ("bitcoin", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"),  # P2WPKH, bech32
    ("bitcoin", "bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297"),  # bech32m
    ("bitcoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
    ("bitcoin", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"),
    ("xrp", "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh"),
    ("dogecoin", "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"),
]

INVALID = [
    ("ethereum", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", "EIP-55"),
    ("ethereum", "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x followed"),
    ("solana", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "32-byte"),
    ("solana", "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLt", "32-byte"),
    ("bitcoin", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdz", "bc1"),  # bad checksum
    ("bitcoin", "BC1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "bc1"),  # mixed case
    ("bitcoin", "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "base58check"),  # testnet
    ("bitcoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "base58check"),
    ("xrp", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "XRP"),
    ("dogecoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "Dogecoin"),
    ("cardano", "addr1xyz", "no address format"),
]


@pytest.mark.parametrize(("network", "address"), VALID)
def test_valid_addresses(network: str, address: str) -> None:
    assert check_address(network, f" {address} ") == address


@pytest.mark.parametrize(("network", "address", "why"), INVALID)
def test_invalid_addresses(network: str, address: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        check_address(network, address)


@given(st.sampled_from(sorted({n for ns in COIN_NETWORKS.values() for n in ns})), st.text())
def test_any_text_raises_only_address_error(network: str, text: str) -> None:
    with contextlib.suppress(AddressError):
        check_address(network, text)


def test_coins_and_networks() -> None:
    assert payout_network("usdc") == ("USDC", "base")
    assert payout_network("USDC", "Solana") == ("USDC", "solana")
    assert payout_network("btc") == ("BTC", "bitcoin")
    with pytest.raises(PricingError, match="unknown coin 'FOO'"):
        payout_network("FOO")
    with pytest.raises(PricingError, match="USDC is not paid on 'bitcoin'"):
        payout_network("USDC", "bitcoin")
    # Every settlement chain can be given a USDC address.
    assert set(CHAINS) <= set(COIN_NETWORKS["USDC"])
