"""The FASHN error taxonomy: one exception per thing a caller must handle differently.

Every class says, through its attributes, what the caller may do next:
``retry_safe`` (the same request may be sent again without paying twice) and, for
predictions that failed, ``retryable`` (a new submission may succeed).
"""

from __future__ import annotations


class FashnError(Exception):
    """Base of every error raised by the tryon client."""


class ConfigurationError(FashnError):
    """The settings cannot work (missing API key, bad limit string)."""


class ApiError(FashnError):
    """The API rejected a request with an HTTP error body ``{"error": code, "message": ...}``.

    No prediction was created by the rejected request.
    """

    http_status: int = 0
    code: str = ""
    retry_safe: bool = False

    def __init__(self, message: str = "", *, http_status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message or self.code or type(self).__name__)
        self.message = message
        if http_status is not None:
            self.http_status = http_status
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.http_status} {self.code}: {self.message}" if self.message else f"{self.http_status} {self.code}"


class BadRequest(ApiError):
    http_status, code = 400, "BadRequest"


class UnauthorizedAccess(ApiError):
    """The key is wrong: stop the whole run."""

    http_status, code = 401, "UnauthorizedAccess"


class NotFound(ApiError):
    """The prediction is unknown or no longer tracked by the provider."""

    http_status, code = 404, "NotFound"


class TooManyRequests(ApiError):
    """Any 429 answer."""

    http_status, code, retry_safe = 429, "TooManyRequests", True


class RateLimitExceeded(TooManyRequests):
    code = "RateLimitExceeded"


class ConcurrencyLimitExceeded(TooManyRequests):
    code = "ConcurrencyLimitExceeded"


class OutOfCredits(TooManyRequests):
    """Retrying cannot succeed until credits are added: stop submitting."""

    code, retry_safe = "OutOfCredits", False


class ServerError(ApiError):
    """A 5xx answer. For ``POST /v1/run`` this is ambiguous, see :class:`AmbiguousSubmission`."""

    http_status, code = 500, "InternalServerError"


class TransportError(FashnError):
    """The request did not get an answer (connect failure, timeout, dropped connection)."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class AmbiguousSubmission(FashnError):
    """``POST /v1/run`` may or may not have created (and billed) a prediction.

    Raised for a 5xx, a read timeout or a dropped connection after the body was sent.
    The client never re-sends in this case: the caller decides, knowing it may pay twice.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


# Names from the provider's table of failed predictions; everything else is treated as
# not retryable, so an unknown failure never spends credits in a loop.
RETRYABLE_FAILURES = frozenset({
    "PipelineError", "UnavailableError", "ThirdPartyError", "3rdPartyProviderError", "InternalServerError",
})
NON_RETRYABLE_FAILURES = frozenset({
    "ImageLoadError", "ContentModerationError", "PoseError", "InputValidationError",
})


class PredictionFailed(FashnError):
    """The prediction ended ``failed`` (or ``canceled``/``time_out``); failed predictions are not charged."""

    def __init__(self, name: str, message: str, *, prediction_id: str | None = None) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.prediction_id = prediction_id

    @property
    def retryable(self) -> bool:
        return self.name in RETRYABLE_FAILURES or self.name in {"time_out", "TimeoutError"}


API_ERRORS: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (BadRequest, UnauthorizedAccess, NotFound, RateLimitExceeded, ConcurrencyLimitExceeded,
                OutOfCredits, ServerError)
}


def api_error_from_response(http_status: int, body: object, retry_after: float | None = None) -> ApiError:
    """Map an HTTP error answer to its exception class, by code first, then by status."""
    code = message = ""
    if isinstance(body, dict):
        code = str(body.get("error") or "")
        message = str(body.get("message") or body.get("detail") or "")
    cls = API_ERRORS.get(code)
    if cls is None:
        cls = {400: BadRequest, 401: UnauthorizedAccess, 404: NotFound, 429: TooManyRequests}.get(http_status)
        if cls is None:
            cls = ServerError if http_status >= 500 else ApiError
    return cls(message, http_status=http_status, code=code or None, retry_after=retry_after)


class OutputExpired(FashnError):
    """An output can no longer be fetched (CDN file deleted after 72 h, base64 after 60 min)."""


class OverBudget(FashnError):
    """The plan's worst case is above the run's spend limit: refused before anything was submitted."""


class InsufficientCredits(FashnError):
    """The balance cannot cover the run: refused before anything was submitted."""
