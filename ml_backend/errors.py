"""Every error the service raises on purpose, in one module (rq's exceptions.py).

``InputError`` is bad input from a client, an event or an operator: it carries the HTTP ``status`` the
web app answers with and the ``field`` it is about, and its message starts with that field. The layers
that re-label an error for their caller (``annotation.task_id`` instead of ``task_id``) use ``at``;
nobody parses a message to find the field again.
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "InputError",
    "LabelStudioAuthError",
    "LabelStudioConnectionError",
    "LabelStudioError",
    "SettingsError",
]

_BODY_PREVIEW = 500


class InputError(ValueError):
    """Bad input: HTTP ``status`` (422 unless said otherwise) and a message naming the ``field``."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def at(self, field: str) -> InputError:
        """The same error about ``field`` (e.g. the field as the caller's request names it)."""
        return type(self)(field, self.message, self.status)


class SettingsError(InputError):
    """A setting has a value that cannot be used; ``field`` (also ``variable``) is the environment
    variable."""

    def __init__(self, field: str, message: str, status: int = 500) -> None:
        super().__init__(field, message, status)

    @property
    def variable(self) -> str:
        return self.field


class LabelStudioError(RuntimeError):
    """A Label Studio call failed; ``status`` is None when no HTTP answer came back at all."""

    def __init__(self, method: str, url: str, status: int | None, body: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        what = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"Label Studio {method} {url} -> {what}: {body[:_BODY_PREVIEW]}")


class LabelStudioConnectionError(LabelStudioError):
    """Label Studio could not be reached (after retries)."""


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused the API token; ``token_kind`` ("personal access token" or "legacy token") says
    which kind was tried, since each fails for its own reasons and has its own fix."""

    def __init__(
        self, method: str, url: str, status: int | None, body: str, *, token_kind: str, hint: str
    ) -> None:
        super().__init__(method, url, status, body)
        self.token_kind = token_kind
        self.hint = hint
        self.args = (f"{self.args[0]} (LABEL_STUDIO_API_KEY tried as a {token_kind}: {hint})",)


class ConnectError(RuntimeError):
    """Connecting a project to the backend failed; the message names the step and Label Studio's answer."""
