"""resolve_settings: the order of sources, URL parsing, TLS, and secrets kept out of sight."""

from __future__ import annotations

import ssl

import pytest

from kaffi.client import ConnectionSettings, resolve_settings
from kaffi.client.config import redact_url
from kaffi.errors import ConfigurationError


def test_default_is_localhost_7419() -> None:
    s = resolve_settings(environ={})
    assert (s.host, s.port, s.password, s.tls) == ("localhost", 7419, None, None)
    assert s.url == "tcp://localhost:7419"
    assert s.timeout == 10.0
    assert s.connect_timeout == 5.0


def test_faktory_url_from_the_environment() -> None:
    s = resolve_settings(environ={"FAKTORY_URL": "tcp://:sekrit@faktory.example:7000"})
    assert (s.host, s.port, s.password) == ("faktory.example", 7000, "sekrit")


def test_faktory_provider_names_the_variable() -> None:
    env = {
        "FAKTORY_PROVIDER": "MY_FAKTORY",
        "MY_FAKTORY": "tcp://other:7001",
        "FAKTORY_URL": "tcp://ignored:1",
    }
    s = resolve_settings(environ=env)
    assert (s.host, s.port) == ("other", 7001)


def test_faktory_provider_holding_a_url_is_refused_without_showing_the_password() -> None:
    with pytest.raises(ConfigurationError, match="FAKTORY_PROVIDER must name") as info:
        resolve_settings(environ={"FAKTORY_PROVIDER": "tcp://:hunter2@host:7419"})
    assert "hunter2" not in str(info.value)


def test_faktory_provider_naming_an_unset_variable() -> None:
    with pytest.raises(ConfigurationError, match="NOPE is not set"):
        resolve_settings(environ={"FAKTORY_PROVIDER": "NOPE"})


def test_real_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    monkeypatch.setenv("FAKTORY_URL", "tcp://from-env:7123")
    assert resolve_settings().host == "from-env"


def test_explicit_arguments_beat_the_environment() -> None:
    env = {"FAKTORY_URL": "tcp://env-host:1"}
    assert resolve_settings("tcp://url-host:2", environ=env).host == "url-host"
    s = resolve_settings(host="arg-host", environ=env)
    assert (s.host, s.port) == ("arg-host", 7419)
    s = resolve_settings("tcp://:a@url-host:2", port=3, password="b", environ=env)
    assert (s.host, s.port, s.password) == ("url-host", 3, "b")


def test_percent_encoded_password() -> None:
    s = resolve_settings("tcp://:p%40ss%3Aword@h:1")
    assert s.password == "p@ss:word"


def test_password_never_in_url_or_repr() -> None:
    s = resolve_settings("tcp://:topsecret@h:1")
    assert "topsecret" not in s.url
    assert "topsecret" not in repr(s)


def test_settings_are_frozen() -> None:
    s = resolve_settings("tcp://h:1")
    with pytest.raises(AttributeError):
        s.host = "other"  # type: ignore[misc]
    assert isinstance(s, ConnectionSettings)


def test_tls_scheme_verifies_certificates_and_hostnames() -> None:
    s = resolve_settings("tcp+tls://secure.example:7419")
    assert s.tls is not None
    assert s.tls.verify_mode == ssl.CERT_REQUIRED
    assert s.tls.check_hostname is True
    assert s.server_hostname == "secure.example"
    assert s.url == "tcp+tls://secure.example:7419"


def test_tls_argument() -> None:
    assert resolve_settings("tcp+tls://h:1", tls=False).tls is None
    ctx = ssl.create_default_context()
    s = resolve_settings("tcp://h:1", tls=ctx)
    assert s.tls is ctx
    assert s.server_hostname == "h"
    assert resolve_settings("tcp://h:1", tls=True).tls is not None
    with pytest.raises(ConfigurationError, match="tls must be"):
        resolve_settings("tcp://h:1", tls="yes")  # type: ignore[arg-type]


def test_ipv6_host() -> None:
    s = resolve_settings("tcp://[::1]:7419")
    assert s.host == "::1"
    assert s.url == "tcp://[::1]:7419"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://:pw@h:1", "scheme must be tcp"),
        ("tcp://:pw@h:notaport", "invalid Faktory URL"),
        ("tcp://:pw@h:99999", "invalid Faktory URL"),
        ("tcp://:pw@:1", "no host"),
        ("tcp://:pw@h:1/path", "nothing after"),
        ("localhost:7419", "scheme must be tcp"),
    ],
)
def test_bad_urls_name_the_url_without_the_password(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as info:
        resolve_settings(url)
    message = str(info.value)
    assert "pw" not in message.replace("password", "")
    assert redact_url(url) in message


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "3", True])
def test_bad_timeouts(value: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        resolve_settings("tcp://h:1", timeout=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        resolve_settings("tcp://h:1", connect_timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [("port", 0), ("port", 70000), ("host", "a b")])
def test_bad_host_or_port(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        resolve_settings(**{name: value})  # type: ignore[arg-type]


def test_redact_url() -> None:
    assert redact_url("tcp://:pw@h:1") == "tcp://***@h:1"
    assert redact_url("tcp://h:1") == "tcp://h:1"
    assert redact_url("pw@h") == "***@h"
