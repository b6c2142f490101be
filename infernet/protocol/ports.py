"""Well-known TCP ports of the Infernet protocols (specs/mesh.md, specs/http-api.md).

Kept here, in a module with no imports, so the CLI can name them without loading libp2p.
"""

from typing import Final

__all__ = ["COORDINATOR_HTTP_PORT", "COORDINATOR_P2P_PORT", "NODE_P2P_PORT"]

NODE_P2P_PORT: Final = 46337
COORDINATOR_P2P_PORT: Final = 46338
COORDINATOR_HTTP_PORT: Final = 8080
