"""Typed failures of the Fasten Connect client.

Every message and attribute is safe to log: status codes, task ids, host names, byte
counts. None carries a URL (download URLs hold signatures), a key or a response body.

    FastenError
    ├── FastenApiError          the API answered a non-retryable error (status_code)
    │   ├── FastenAuthError     401/403: wrong or revoked credentials for this mode
    │   └── FastenNotFound      404 on a task or connection
    ├── FastenUnavailable       429/5xx/network errors outlasted the retry budget
    ├── FastenProtocolError     an answer we cannot read (not JSON, missing fields)
    ├── ExportFileGone          404/410 on the download route: the 24 h file life is over
    ├── DownloadRefused         the link's host is not on the allow-list (the caller alerts)
    ├── DownloadError           the transfer could not be completed intact
    └── FastenNotConfigured     no credentials for the requested mode
"""

from __future__ import annotations


class FastenError(Exception):
    """Base of every client failure."""


class FastenApiError(FastenError):
    """Fasten answered an error that retrying will not fix."""

    def __init__(self, status_code: int, operation: str) -> None:
        super().__init__(f"{operation}: Fasten answered HTTP {status_code}")
        self.status_code = status_code
        self.operation = operation


class FastenAuthError(FastenApiError):
    """401/403 from the API: the credentials of this mode are wrong or revoked."""


class FastenNotFound(FastenApiError):
    """404 from the API for a task or connection id."""


class FastenUnavailable(FastenError):
    """Retryable failures (429, 5xx, network) did not stop within the attempt budget.

    ``retry_after`` is set when the server asked for a longer pause than the client is
    willing to sleep in-process: the caller may wait that long (durably) and try again.
    """

    def __init__(
        self,
        operation: str,
        attempts: int,
        last_status: int | None = None,
        last_error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        cause = f"HTTP {last_status}" if last_status is not None else (last_error or "error")
        super().__init__(f"{operation}: gave up after {attempts} attempt(s), last: {cause}")
        self.operation = operation
        self.attempts = attempts
        self.last_status = last_status
        self.last_error = last_error
        self.retry_after = retry_after


class FastenProtocolError(FastenError):
    """The answer could not be understood (wrong content type, missing fields)."""


class ExportFileGone(FastenError):
    """The API download route answered 404/410: the export file no longer exists."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"export file is gone (HTTP {status_code})")
        self.status_code = status_code


class DownloadRefused(FastenError):
    """A download link (or its redirect) points somewhere we must not go.

    ``host`` is the offending host name (no path, no query); ``reason`` a short code:
    ``host_not_allowed``, ``scheme_not_allowed``, ``bad_redirect`` or ``redirect_not_allowed``.
    """

    def __init__(self, host: str, reason: str = "host_not_allowed") -> None:
        super().__init__(f"download refused ({reason}): host {host!r}")
        self.host = host
        self.reason = reason


class DownloadError(FastenError):
    """The file could not be transferred intact (too many broken or expired attempts,
    more bytes than announced, a storage answer we cannot use)."""

    def __init__(self, reason: str, bytes_written: int = 0) -> None:
        super().__init__(f"download failed: {reason} ({bytes_written} bytes written)")
        self.reason = reason
        self.bytes_written = bytes_written


class FastenNotConfigured(FastenError):
    """No credentials are configured for the requested mode."""
