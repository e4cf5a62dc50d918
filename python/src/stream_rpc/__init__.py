"""stream-rpc for Python: the original ``stream_rpc`` API, speaking the JSON wire
of ``docs/PROTOCOL.md``, so Python and Rust peers talk to each other.

Import from :mod:`stream_rpc.common` and :mod:`stream_rpc.crypto` as with the
original; the main names are also here.
"""

from .common import Connector, MessagePacket, Protocol, RemoteError, create_message_packet
from .crypto import CryptoKeyError, Cypher, TokenError, generate_key

__all__ = [
    "Connector",
    "CryptoKeyError",
    "Cypher",
    "MessagePacket",
    "Protocol",
    "RemoteError",
    "TokenError",
    "create_message_packet",
    "generate_key",
]
__version__ = "0.1.0"
