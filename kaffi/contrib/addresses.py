"""``HOST:PORT`` for the HTTP servers that expose metrics (``--metrics``, ``--listen``).

The rule: ``HOST:PORT``, ``[IPv6]:PORT``, or ``:PORT`` / ``PORT`` alone for the loopback
address (metrics are not published beyond the machine unless asked: ``0.0.0.0:9191``).
The port is 0 to 65535 (0: any free port, for tests). No I/O, no extra needed, so the
command line checks an address before it imports prometheus-client.
"""

from __future__ import annotations

from kaffi.errors import ConfigurationError

__all__ = ["LOOPBACK", "format_address", "parse_listen_address"]

#: Where a metrics server listens when the address names only a port.
LOOPBACK = "127.0.0.1"


def parse_listen_address(text: str, *, what: str = "listen address") -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (see the module docstring); a bad one raises
    ConfigurationError naming ``what`` and the expected form."""
    value = text.strip()
    expected = f"{what} must be HOST:PORT (like 127.0.0.1:9191, [::1]:9191 or :9191), got {text!r}"
    if not value:
        raise ConfigurationError(expected)
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":") or not host:
            raise ConfigurationError(expected)
        port_text = rest[1:]
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        if ":" in host:  # a bare IPv6 address: its port would be ambiguous
            raise ConfigurationError(f"{expected}; put an IPv6 address in brackets")
        host = host or LOOPBACK
    else:
        host, port_text = LOOPBACK, value
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"{expected}: the port must be a number from 0 to 65535")
    if any(c.isspace() for c in host):
        raise ConfigurationError(expected)
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (the form :func:`parse_listen_address`
    reads back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
