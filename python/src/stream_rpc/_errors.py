"""The error packet's exception (PROTOCOL.md §6).

Internal: the public name is :class:`stream_rpc.common.RemoteError`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class RemoteError(Exception):
    """An error packet (PROTOCOL.md §6).

    Raised by :meth:`Protocol.call` when the answer is one; raise it in
    ``process_message`` to answer the request being handled with one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        data: Any = None,
        method: Optional[str] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def payload(self) -> Dict[str, Any]:
        """The error packet's payload."""
        body: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.method is not None:
            body["method"] = self.method
        if self.data is not None:
            body["data"] = self.data
        return body
