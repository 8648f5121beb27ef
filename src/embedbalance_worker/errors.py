"""The one error shape every non-2xx answer uses.

Why a fixed shape: the client library and operators read ``error_type`` to decide what to
do (retry elsewhere, back off, fix the request) without parsing prose.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An answer to send instead of embeddings: status, machine slug, human message."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        """The JSON error response: ``{"error": message, "error_type": slug}``."""
        return error_response(self.status, self.error_type, self.message, self.headers)


def error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Build the error body; used for our own errors and for routing errors alike."""
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status, headers=headers
    )
