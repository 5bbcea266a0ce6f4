"""Where and how to connect: :class:`ConnectionSettings` and :func:`resolve_settings`.

This module owns the rules that turn a URL, keyword arguments and the environment into
one immutable settings object that every connection of a client shares:

1. explicit arguments (``url=``, ``host=``, ``port=``, ``password=``, ``tls=``);
2. else ``FAKTORY_PROVIDER``, which *names* the environment variable holding the URL;
3. else ``FAKTORY_URL``;
4. else ``tcp://localhost:7419``.

``tcp://`` is plain TCP; ``tcp+tls://`` is TLS with certificate and hostname
verification (:func:`ssl.create_default_context`). The password travels in the URL
(``tcp://:PASSWORD@host:7419``) or ``password=``; it is never part of
:attr:`~ConnectionSettings.url`, ``repr()`` or an error message.

It opens no socket: settings are resolved once per client, never per command.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from kaffi.errors import ConfigurationError

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "ConnectionSettings",
    "resolve_settings",
    "redact_url",
]

DEFAULT_PORT = 7419
DEFAULT_URL = f"tcp://localhost:{DEFAULT_PORT}"
#: Read/write deadline. It must comfortably exceed the ~2 s a server blocks an empty FETCH.
DEFAULT_TIMEOUT = 10.0
#: Deadline for TCP connect + TLS handshake + HI/HELLO.
DEFAULT_CONNECT_TIMEOUT = 5.0

_SCHEMES = {"tcp": False, "tcp+tls": True}


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Everything a connection needs, resolved once. Immutable and safe to share.

    ``tls`` is the :class:`ssl.SSLContext` to wrap sockets with, or None for plain TCP.
    ``server_hostname`` is the name the certificate is checked against (the host).
    """

    host: str
    port: int
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @property
    def url(self) -> str:
        """The URL of the server, without the password (safe to log)."""
        scheme = "tcp+tls" if self.tls is not None else "tcp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def redact_url(url: str) -> str:
    """``url`` with any user/password part replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        # Not a URL at all: it may still be a bare "password@host" someone pasted.
        return "***@" + url.rpartition("@")[2] if "@" in url else url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def _url_from_environment(environ: Mapping[str, str]) -> str | None:
    provider = environ.get("FAKTORY_PROVIDER")
    if provider:
        if ":" in provider or "/" in provider:
            raise ConfigurationError(
                "FAKTORY_PROVIDER must name the environment variable that holds the URL "
                f"(like FAKTORY_PROVIDER=FAKTORY_URL), not be a URL: got {redact_url(provider)!r}"
            )
        url = environ.get(provider)
        if not url:
            raise ConfigurationError(
                f"FAKTORY_PROVIDER={provider} but the environment variable {provider} is not set"
            )
        return url
    return environ.get("FAKTORY_URL") or None


def _parse_url(url: str) -> tuple[bool, str, int, str | None]:
    """(tls, host, port, password) from a Faktory URL, or ConfigurationError naming it."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid Faktory URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"invalid Faktory URL {shown!r}: the scheme must be tcp:// or tcp+tls://"
        )
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"invalid Faktory URL {shown!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"invalid Faktory URL {shown!r}: "
            "expected tcp://[:password@]host[:port] and nothing after it"
        )
    password = unquote(parts.password) if parts.password else None
    return _SCHEMES[scheme], host, port if port is not None else DEFAULT_PORT, password


def _check_seconds(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def resolve_settings(
    url: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | bool | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Resolve where and how to connect (see the module docstring for the order).

    ``host``/``port``/``password`` override the matching part of the URL. ``tls`` is an
    :class:`ssl.SSLContext` (custom CA, client certificates), ``True`` for the default
    verifying context, ``False`` for plain TCP even with ``tcp+tls://``, or None to follow
    the URL's scheme. ``environ`` defaults to :data:`os.environ` (tests pass their own).
    """
    if url is None and host is None and port is None:
        url = _url_from_environment(os.environ if environ is None else environ)
    use_tls, url_host, url_port, url_password = _parse_url(url or DEFAULT_URL)

    if host is not None:
        if not isinstance(host, str) or not host or any(c in host for c in " /@"):
            raise ConfigurationError(f"host must be a host name or address, got {host!r}")
        url_host = host.strip("[]")
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port must be an integer from 1 to 65535, got {port!r}")
        url_port = port
    if password is not None:
        url_password = password or None

    context: ssl.SSLContext | None
    if isinstance(tls, ssl.SSLContext):
        context = tls
    elif tls is True or (tls is None and use_tls):
        context = ssl.create_default_context()
    elif tls is False or tls is None:
        context = None
    else:
        raise ConfigurationError(f"tls must be an ssl.SSLContext, True, False or None, got {tls!r}")

    return ConnectionSettings(
        host=url_host,
        port=url_port,
        password=url_password,
        tls=context,
        server_hostname=url_host if context is not None else None,
        timeout=DEFAULT_TIMEOUT if timeout is None else _check_seconds("timeout", timeout),
        connect_timeout=(
            DEFAULT_CONNECT_TIMEOUT
            if connect_timeout is None
            else _check_seconds("connect_timeout", connect_timeout)
        ),
    )
