"""The one error vocabulary shared by HTTP, the job protocol and the CLI.

Owns: the wire error codes (DESIGN.md §3 "Errors"), their HTTP status, retryability and
default message, and the exception tree every Infernet layer raises.

Exception tree (the classes outside this module live beside the rule they enforce)::

    InfernetError                 root of everything the project raises on purpose
    ├── ProtocolError             a message broke a wire rule
    │   ├── LocalProtocolError    we tried to send something illegal (our bug)
    │   └── RemoteProtocolError   the peer sent something illegal (its fault)
    │       └── e2e.E2EError      a sealed request or chunk does not open or bind (bad_request)
    ├── SignatureError            a signature or event id does not verify
    │   └── delegation.DelegationError   a key chain does not authorize the action
    ├── auth.AuthError            X-Infernet-Auth refused (unauthorized): Malformed, Expired,
    │   │                         Future, Replay, Signature (also a SignatureError), UnknownKey
    │   └── auth.AuthBusyError    the nonce cache is full (rate_limited)
    ├── keys.KeyFormatError       a key, bech32 or peer-id string is malformed (bad_request)
    ├── nip44.Nip44Error          a NIP-44 payload or key is invalid (bad_request)
    ├── pricing.PricingError      unknown chain or tier, a float for money (bad_request)
    ├── replay.ReplayCacheFull    too many live nonces to remember one more (rate_limited)
    ├── TransportError            mesh only: unreachable peer, broken stream, timeout
    ├── BackendError              the inference engine failed or is unreachable
    └── JobFailed                 a job ended with a wire error code (carried as ``code``)

Invariant: every exception carries a ``code`` from ``ErrorCode``, so any layer can turn it
into an HTTP body, an error frame or a CLI message without guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "ERRORS",
    "BackendError",
    "ErrorCode",
    "ErrorInfo",
    "InfernetError",
    "JobFailed",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SignatureError",
    "TransportError",
    "info",
]

ErrorCode = Literal[
    "unauthorized",
    "bad_request",
    "model_not_found",
    "not_found",
    "no_capacity",
    "rate_limited",
    "node_disconnected",
    "timeout",
    "internal_error",
    "backend_unavailable",
    "protocol_error",
    "cancelled",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What a code means to a client: HTTP status, OpenAI error type, retry advice."""

    code: ErrorCode
    status: int
    type: str
    retryable: bool
    message: str


ERRORS: Final[dict[ErrorCode, ErrorInfo]] = {
    e.code: e
    for e in (
        ErrorInfo("unauthorized", 401, "authentication_error", False,
                  "Missing or invalid credentials."),
        ErrorInfo("bad_request", 400, "invalid_request_error", False,
                  "The request is malformed."),
        ErrorInfo("model_not_found", 404, "invalid_request_error", False,
                  "No node in the network serves this model."),
        ErrorInfo("not_found", 404, "invalid_request_error", False,
                  "No such job, receipt or resource for these credentials."),
        ErrorInfo("no_capacity", 503, "server_error", True,
                  "Every node serving this model is busy or offline; retry shortly."),
        ErrorInfo("rate_limited", 429, "rate_limit_error", True,
                  "Too many requests for this token."),
        ErrorInfo("node_disconnected", 502, "server_error", True,
                  "The node serving this job disconnected before it finished."),
        ErrorInfo("timeout", 504, "server_error", True,
                  "The job did not finish in time."),
        ErrorInfo("internal_error", 500, "server_error", True,
                  "An internal error occurred."),
        ErrorInfo("backend_unavailable", 503, "server_error", True,
                  "The node's inference engine is not available."),
        ErrorInfo("protocol_error", 502, "server_error", False,
                  "A peer broke the wire protocol."),
        ErrorInfo("cancelled", 499, "server_error", False,
                  "The job was cancelled."),
    )
}


def info(code: ErrorCode) -> ErrorInfo:
    """Return the table entry for ``code``."""
    return ERRORS[code]


class InfernetError(Exception):
    """Root of every error Infernet raises on purpose; ``code`` names it on the wire."""

    code: ErrorCode = "internal_error"

    def __init__(self, message: str = "", *, code: ErrorCode | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or ERRORS[self.code].message)

    @property
    def message(self) -> str:
        return str(self)


class ProtocolError(InfernetError):
    """A message broke a wire rule; see the two subclasses for whose fault it was."""

    code: ErrorCode = "protocol_error"


class LocalProtocolError(ProtocolError):
    """Raised when this side tries to send something the protocol forbids: a bug here."""


class RemoteProtocolError(ProtocolError):
    """Raised when the peer sent garbage, an oversized frame or an illegal transition.

    Reset the stream and keep serving others; the peer is at fault.
    """


class SignatureError(InfernetError):
    """Raised when an event id, Schnorr signature or signer identity does not verify.

    Drop the message; never act on it.
    """

    code: ErrorCode = "unauthorized"


class TransportError(InfernetError):
    """Raised by mesh/ when a peer is unreachable, a stream breaks or a read times out.

    The outcome of an in-flight job is unknown; callers may fail over before the first token.
    """

    code: ErrorCode = "node_disconnected"


class BackendError(InfernetError):
    """Raised when the inference engine is unreachable, dies or answers garbage."""

    code: ErrorCode = "backend_unavailable"


class JobFailed(InfernetError):
    """Raised on the client side when a job ends with an error frame; ``code`` is the wire code."""
