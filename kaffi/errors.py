"""Every exception kaffi raises, under one root: :class:`KaffiError`.

The tree is split by *cause*, so callers can decide what to do without parsing messages:

- :class:`ProtocolError`: bytes that do not follow the Faktory Work Protocol.
  :class:`LocalProtocolError` means kaffi itself was asked to send something invalid;
  :class:`RemoteProtocolError` means the peer sent something unparseable (the connection
  that read it is no longer trustworthy and is thrown away).
- :class:`ServerError`: the server answered ``-ERR``/``-CODE``. The connection stays usable.
  :class:`AuthenticationError` is the one server error that also closes the connection.
  :class:`NotUnique` (a unique job's duplicate, ``-NOTUNIQUE``) and
  :class:`EnterpriseRequired` (an open-source server refusing an Enterprise command) and
  :class:`BatchNotFound` (an Enterprise batch the server does not know) are server errors
  too.
- :class:`TransportError`: the network failed (connect refused, reset, timeout). The
  connection is thrown away. Nothing here shadows the builtin ``ConnectionError`` or
  ``TimeoutError``: the names are ``ConnectError`` and ``ConnectTimeout`` and so on.
- :class:`PoolTimeout`: no connection could be borrowed in time.
- :class:`ValidationError`: a job, an argument or an option was refused locally, before
  anything was sent.
- :class:`JobError` and :class:`ConfigurationError`: problems running or setting up jobs.

This module must never import anything else from kaffi: every layer imports it.
"""

from __future__ import annotations

__all__ = [
    "KaffiError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ServerError",
    "AuthenticationError",
    "NotUnique",
    "EnterpriseRequired",
    "BatchNotFound",
    "TransportError",
    "ConnectError",
    "ReadError",
    "WriteError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "ValidationError",
    "JobError",
    "UnknownJobType",
    "ArgumentsError",
    "ConfigurationError",
    "AppImportError",
    "UNREACHABLE_HINT",
]


class KaffiError(Exception):
    """The root of every error kaffi raises."""


# -- protocol -----------------------------------------------------------------------------


class ProtocolError(KaffiError):
    """Bytes that do not follow the Faktory Work Protocol."""


class LocalProtocolError(ProtocolError):
    """kaffi was asked to send something the protocol cannot carry (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes kaffi cannot parse; the connection is poisoned."""


# -- server replies -----------------------------------------------------------------------


class ServerError(KaffiError):
    """The server answered with an error reply (``-ERR message`` or ``-CODE message``).

    ``code`` is the word after the dash (``"ERR"``, ``"NOTUNIQUE"``, ...) and ``message`` is
    the server's text, exactly as sent. The connection remains usable.
    """

    def __init__(self, code: str, message: str, *, command: str | None = None) -> None:
        self.code = code
        self.message = message
        self.command = command
        where = f" (to {command})" if command else ""
        super().__init__(f"server refused{where}: -{code} {message}")


class AuthenticationError(ServerError):
    """The server refused the password. It closes the connection after saying so."""

    def __init__(self, code: str, message: str, *, command: str | None = None) -> None:
        super().__init__(code, message, command=command)
        self.args = (
            f"authentication failed: the server said '-{code} {message}'; "
            "check the password in FAKTORY_URL (tcp://:PASSWORD@host:port) or password=",
        )


class NotUnique(ServerError):
    """A Faktory Enterprise server refused a PUSH because a job with the same jobtype, args
    and queue holds a unique lock (``-NOTUNIQUE Job not unique``).

    ``jobtype`` is the refused job's type (None when it could not be told); ``code`` and
    ``message`` are the server's, as for every :class:`ServerError`.
    """

    def __init__(
        self, code: str, message: str, *, command: str | None = None, jobtype: str | None = None
    ) -> None:
        super().__init__(code, message, command=command)
        self.jobtype = jobtype
        what = f"job {jobtype!r}" if jobtype else "job"
        self.args = (
            f"{what} is not unique: another with the same args and queue holds its unique lock"
            f" (the server said '-{code} {message}')",
        )


class EnterpriseRequired(ServerError):
    """The server is open-source Faktory and the command needs Faktory Enterprise
    (``-ERR batch subsystem is only available in Faktory Enterprise`` and the like)."""

    def __init__(self, code: str, message: str, *, command: str | None = None) -> None:
        super().__init__(code, message, command=command)
        where = f"{command} " if command else ""
        self.args = (
            f"{where}needs Faktory Enterprise (or `kaffi server --enterprise`): the server"
            f" said '-{code} {message}'",
        )


class BatchNotFound(ServerError):
    """A Faktory Enterprise server does not know the batch (``-ERR no such batch <bid>``):
    it never existed, or it expired (an uncommitted batch lives 30 minutes).

    ``bid`` is the batch named in the server's text (None when it named none); ``code``
    and ``message`` are the server's, as for every :class:`ServerError`. Raised by the
    BATCH commands and by a PUSH of a job whose ``custom.bid`` names such a batch.
    """

    def __init__(
        self, code: str, message: str, *, command: str | None = None, bid: str | None = None
    ) -> None:
        super().__init__(code, message, command=command)
        self.bid = bid
        where = f" (to {command})" if command else ""
        what = f"batch {bid!r}" if bid else "the batch"
        self.args = (
            f"{what} does not exist on the server{where}: it was never created or it expired"
            f" (the server said '-{code} {message}')",
        )


# -- transport ----------------------------------------------------------------------------


class TransportError(KaffiError):
    """The network failed under a connection. The connection is thrown away."""


class ConnectError(TransportError):
    """The server could not be reached (refused, unresolvable, TLS handshake failed)."""


#: What a refused or unreachable server's ConnectError ends with: the two usual fixes.
UNREACHABLE_HINT = "start a server with `kaffi server`, or set FAKTORY_URL"


class ReadError(TransportError):
    """Reading from the server failed, or the server closed the connection."""


class WriteError(TransportError):
    """Writing to the server failed."""


class ConnectTimeout(ConnectError):
    """Connecting (including the HI/HELLO handshake) took longer than the timeout."""


class ReadTimeout(ReadError):
    """The server did not answer within the timeout."""


class WriteTimeout(WriteError):
    """The server did not accept our bytes within the timeout."""


class PoolTimeout(KaffiError):
    """Every pooled connection stayed busy for longer than the pool timeout."""


# -- local validation and jobs ------------------------------------------------------------


class ValidationError(KaffiError, ValueError):
    """A job, argument or option was refused before anything was sent.

    Also a ``ValueError``, so code that guards input with ``except ValueError`` keeps
    working. ``field`` names what was wrong where that is known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class ConfigurationError(KaffiError):
    """kaffi was set up wrongly: a bad URL, an app that cannot be found, bad options."""


class AppImportError(ConfigurationError):
    """The app's module raised while it was imported (a SyntaxError, a missing
    dependency, any error in its top-level code). The message is one line naming the
    file, the line and the error; ``user_traceback`` holds the frames of the user's own
    code (no importlib or kaffi frames), for ``--traceback``."""

    def __init__(self, message: str, *, user_traceback: str = "") -> None:
        self.user_traceback = user_traceback
        super().__init__(message)


class JobError(KaffiError):
    """A job could not be run as asked."""


class UnknownJobType(JobError):
    """A worker fetched a job whose jobtype has no registered function."""


class ArgumentsError(JobError):
    """A job's args do not fit its function's signature or types."""
