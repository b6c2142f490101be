"""Sans-IO protocol layer: pure functions and msgspec Structs, no sockets, clock or env.

Modules: ``errors`` (error vocabulary), ``keys`` (secp256k1/BIP-340, npub/nsec, peer ids),
``nip19`` (note, nprofile, nevent, naddr), ``event`` (NIP-01 events), ``announce``
(capability announcements), ``frames`` (job frames), ``job_stream`` (job state machine),
``nip44`` (NIP-44 v2 encryption), ``e2e`` (sealed jobs), ``auth`` (X-Infernet-Auth),
``replay`` (nonce cache), ``canonical`` (canonical CBOR records), ``receipt`` (CPRs),
``delegation`` (IPIP-0028 key hierarchy, owner commands), ``pricing`` (tiers, rates, fees,
coins and networks), ``address`` (payout address formats per network), ``ports``
(well-known ports, import-free for a fast CLI).
"""

__all__: list[str] = []
