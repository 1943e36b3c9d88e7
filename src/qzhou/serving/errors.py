"""Errors as OpenAI-style JSON bodies, `{"error": {"message", "type", "code"}}`, with the HTTP status the issue
fixes for each case; one class so that every route and the batcher raise the same thing."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered to the client as it is (status, one-line message saying the fix, machine-readable code)."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.code, self.kind, self.headers)


def error_response(status: int, message: str, code: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(message: str, code: str = "invalid_input") -> ApiError:
    """422: the request is well-formed JSON but asks for something the server will not do."""
    return ApiError(422, message, code)


def unauthorized() -> ApiError:
    return ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                    "invalid_api_key", "authentication_error")


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"request body is {size} bytes, over the payload limit of {limit} bytes; send fewer or "
                         "shorter inputs per request (server flag --payload-limit)", "payload_too_large")


def queue_full(retry_after: int, limit: int) -> ApiError:
    return ApiError(429, f"the queue is full ({limit} inputs waiting or running); retry after {retry_after} s "
                         "(server flag --max-queue)", "queue_full", "rate_limit_error",
                    {"Retry-After": str(retry_after)})


def timed_out(seconds: float) -> ApiError:
    return ApiError(504, f"the request did not finish within {seconds:g} s (server flag --request-timeout); "
                         "retry, or send fewer inputs", "timeout", "timeout_error")


def failed(reason: str) -> ApiError:
    return ApiError(500, f"the model failed on this request: {reason}", "inference_failed", "server_error")


def unavailable(why: str) -> ApiError:
    return ApiError(503, why, "unavailable", "server_error", {"Retry-After": "1"})
