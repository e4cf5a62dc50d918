"""The error packet's exception (PROTOCOL.md §6).

Internal: the public names are :class:`stream_rpc.common.RemoteError` and
:class:`stream_rpc.common.PermanentError`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class RemoteError(Exception):
    """An error packet (PROTOCOL.md §6).

    Raised by :meth:`Protocol.call` when the answer is one; raise it in
    ``process_message`` to answer the request being handled with one.
    ``retry``: whether the failure is worth another attempt (the payload's
    ``retry``; ``None``, absent from the payload, leaves it to the receiver:
    a task queue retries by the task's policy; ``False`` makes a task's
    failure final).
    """

    def __init__(
        self,
        code: str,
        message: str,
        data: Any = None,
        method: Optional[str] = None,
        *,
        retry: Optional[bool] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data
        self.method = method
        self.retry = retry

    def payload(self) -> Dict[str, Any]:
        """The error packet's payload."""
        body: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.method is not None:
            body["method"] = self.method
        if self.data is not None:
            body["data"] = self.data
        if self.retry is not None:
            body["retry"] = self.retry
        return body

    @classmethod
    def from_payload(cls, body: Any) -> RemoteError:
        """The exception of an error packet's payload (fields of the wrong
        type read as absent)."""
        body = body if isinstance(body, dict) else {}
        method = body.get("method")
        retry = body.get("retry")
        return cls(
            str(body.get("code", "unknown")),
            str(body.get("message", "")),
            body.get("data"),
            method if isinstance(method, str) else None,
            retry=retry if isinstance(retry, bool) else None,
        )


class PermanentError(RemoteError):
    """A handler's failure that another attempt cannot mend: answered as a
    ``handler_error`` whose payload says ``"retry": false``, so that a task
    queue makes the task a dead letter at once instead of retrying it.

    ``raise PermanentError("article 7 does not exist", data={"article_id": 7})``
    """

    def __init__(self, message: str, data: Any = None, method: Optional[str] = None) -> None:
        super().__init__("handler_error", message, data, method, retry=False)
