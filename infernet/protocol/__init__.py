"""Sans-IO protocol layer: pure functions and msgspec Structs, no sockets, clock or env.

Modules: ``errors`` (error vocabulary), ``keys`` (secp256k1/BIP-340, NIP-19, peer ids),
``event`` (NIP-01 events), ``announce`` (capability announcements), ``frames`` (job frames),
``job_stream`` (job state machine).
"""

__all__: list[str] = []
