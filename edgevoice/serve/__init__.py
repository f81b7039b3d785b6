"""Many conversations per process: `edgevoice serve` over WebSocket, and the kiosk page it serves.

``Server`` (``edgevoice.serve.server``) is the websockets app; ``ConversationHost``
(``edgevoice.serve.conversation``) runs conversations over any message transport;
``edgevoice.serve.protocol`` is the wire protocol (docs/serve.md).
"""

from __future__ import annotations

__all__ = ["ConversationHost", "Server"]


def __getattr__(name: str):
    # Lazy: importing the package (or its protocol) does not load the runtime.
    if name == "Server":
        from edgevoice.serve.server import Server

        return Server
    if name == "ConversationHost":
        from edgevoice.serve.conversation import ConversationHost

        return ConversationHost
    raise AttributeError(name)
