"""Infernet: a node of the decentralized inference network.

Packages: ``protocol`` (pure wire formats), ``mesh`` (libp2p I/O), ``backends`` (engine
adapters), ``node`` (the daemon), ``cli`` (the ``infernet`` command), ``client`` (Python client).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
