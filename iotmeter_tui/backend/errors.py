"""The project's own errors. Drivers' exceptions are translated into these where they enter
(the adapter edge), so callers decide on one question: is it worth retrying?"""

from __future__ import annotations


class IotmeterError(Exception):
    """Base of every error iotmeter raises on purpose."""


class StoreError(IotmeterError):
    """A store refused or failed an operation. `store` names it for the operator."""

    retryable: bool = False

    def __init__(self, store: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store
        self.retry_after = retry_after


class StoreUnavailable(StoreError):
    """Could not reach the store, or it answered 5xx/429: try again after a back-off."""

    retryable = True


class StoreRejected(StoreError):
    """The store understood and refused (bad request, auth, schema): retrying will not help."""

    retryable = False


class PartialWriteError(StoreRejected):
    """Some points of a batch were refused; `failed` says which, `accepted` how many were kept."""

    def __init__(self, store: str, message: str, failed: list[object], accepted: int) -> None:
        super().__init__(store, message)
        self.failed = failed
        self.accepted = accepted


class AlreadyExists(StoreRejected):
    """What was to be created exists already (a device id, an API key name): a conflict
    the caller can report as such (HTTP 409) rather than as a store failure."""


class NotFound(IotmeterError):
    """What a request names does not exist (a device, an API key): HTTP 404 for the API."""


class InvalidRequest(IotmeterError):
    """A request a service refuses as asked (a bad value, an unknown key); `str()` is one line
    naming what is wrong (HTTP 400 / 422 for the API)."""
