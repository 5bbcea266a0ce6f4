"""``reserve_for`` below a minute, as code ported from Node sends it (issue 14, item 2).

A real Faktory 1.10.0 accepts any ``reserve_for`` up to a day, keeps it in the payload as
sent and reserves the job for 60 s at least; kaffi's payloads and server do the same."""

from __future__ import annotations

import pytest

from kaffi import App
from kaffi.errors import ValidationError
from kaffi.server import EmbeddedServer


def test_a_30_second_reservation_is_sent_as_is_and_held_for_60() -> None:
    with EmbeddedServer() as srv:
        app = App(url=srv.url)

        @app.task(reserve_for=30)
        def quick(n: int) -> None:
            """A task ported from Node with reserveFor: 30."""

        try:
            jid = quick.delay(1)
            assert jid is not None
            job = app.client.fetch("default")
            assert job is not None
            assert job.jid == jid
            assert job.reserve_for == 30  # the payload keeps what was sent
            srv.advance_clock(59)
            assert srv.info()["faktory"]["sets"]["working"] == 1  # still reserved
            srv.advance_clock(2)
            info = srv.info()["faktory"]
            assert info["sets"]["working"] == 0
            assert info["sets"]["retries"] == 1  # the reservation expired after 60 s
            with pytest.raises(ValidationError, match="at most 86400 seconds"):
                quick.options(reserve_for=86_401)
        finally:
            app.close()
