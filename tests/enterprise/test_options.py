"""Faktory Enterprise options and replies on the client side, without a server: the
``custom`` keys tasks and Job builders write, their checks, and the errors replies map to."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

import kaffi
from kaffi import App, Client
from kaffi.errors import EnterpriseRequired, NotUnique, ServerError, ValidationError
from kaffi.protocol.commands import decode_progress, raise_for_error
from kaffi.protocol.enterprise import enterprise_custom, track_set_document
from kaffi.protocol.models import RejectedJob
from kaffi.protocol.resp import BulkReply, ErrorReply
from kaffi.protocol.rfc3339 import parse_rfc3339


@pytest.fixture
def app() -> App:
    # Nothing is sent: the App's URL only has to parse.
    return App("tcp://127.0.0.1:1")


def test_both_errors_are_exported_server_errors() -> None:
    assert kaffi.NotUnique is NotUnique
    assert kaffi.EnterpriseRequired is EnterpriseRequired
    assert issubclass(NotUnique, ServerError)
    assert issubclass(NotUnique, kaffi.KaffiError)
    assert issubclass(EnterpriseRequired, ServerError)
    assert "NotUnique" in kaffi.__all__
    assert "EnterpriseRequired" in kaffi.__all__


def test_notunique_reply_raises_notunique_with_jobtype_and_text() -> None:
    with pytest.raises(NotUnique) as caught:
        raise_for_error(ErrorReply("NOTUNIQUE", "Job not unique"), "PUSH", jobtype="sync")
    assert caught.value.jobtype == "sync"
    assert caught.value.code == "NOTUNIQUE"
    assert caught.value.message == "Job not unique"
    assert "'sync' is not unique" in str(caught.value)


def test_oss_refusal_raises_enterprise_required_in_one_line() -> None:
    text = "tracking subsystem is only available in Faktory Enterprise"
    with pytest.raises(EnterpriseRequired) as caught:
        raise_for_error(ErrorReply("ERR", text), "TRACK GET")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("TRACK GET needs Faktory Enterprise")
    assert text in message
    # Other errors stay plain server errors.
    with pytest.raises(ServerError) as other:
        raise_for_error(ErrorReply("ERR", "unknown command X"))
    assert type(other.value) is ServerError


def test_rejected_job_says_when_it_was_a_duplicate() -> None:
    assert RejectedJob(jid="a", reason="NOTUNIQUE Job not unique", payload={}).not_unique
    assert not RejectedJob(jid="a", reason="jobtype must be set", payload={}).not_unique


def test_task_options_write_enterprise_custom_keys(app: App) -> None:
    @app.task(unique_for=600, unique_until="start", track=True, custom={"team": "x"})
    def sync(account: int) -> None:
        del account

    payload = sync.payload((7,), {})
    assert payload["custom"] == {
        "team": "x",
        "unique_for": 600,
        "unique_until": "start",
        "track": 1,
    }
    assert sync.custom == {"team": "x"}
    # The encoded fast path writes the same keys.
    data = sync.encoded_job((7,), {}).data
    assert b'"unique_for":600' in data
    assert b'"track":1' in data


def test_options_switch_uniqueness_off_and_keep_the_rest(app: App) -> None:
    @app.task(unique_for=600, unique_until="start", track=True)
    def sync(account: int) -> None:
        del account

    plain = sync.options(unique_for=None)
    assert plain.payload((1,), {})["custom"] == {"track": 1}
    kept = sync.options(queue="low")
    assert kept.payload((1,), {})["custom"]["unique_for"] == 600
    longer = sync.options(unique_for=timedelta(minutes=20))
    assert longer.payload((1,), {})["custom"]["unique_for"] == 1200
    untracked = sync.options(track=None, unique_for=None)
    assert "custom" not in untracked.payload((1,), {}) or not untracked.payload((1,), {}).get(
        "custom"
    )


def test_expires_in_is_an_absolute_expires_at_at_each_push(app: App) -> None:
    @app.task(expires_in=timedelta(hours=1))
    def report() -> None:
        pass

    before = datetime.now(timezone.utc)
    custom = report.payload((), {})["custom"]
    at = parse_rfc3339(custom["expires_at"])
    assert before + timedelta(minutes=59) < at < before + timedelta(minutes=61)
    assert set(custom) == {"expires_at"}
    encoded = report.encoded_job((), {}).data
    assert b'"expires_at"' in encoded
    fixed = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    switched = report.options(expires_at=fixed)
    assert switched.payload((), {})["custom"] == {"expires_at": "2031-01-02T03:04:05.000000Z"}
    assert report.options(expires_in=None).payload((), {}).get("custom") is None


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"unique_for": 0}, "unique_for", "above 0"),
        ({"unique_for": "600"}, "unique_for", "seconds or a timedelta"),
        ({"unique_for": float("nan")}, "unique_for", "finite"),
        ({"unique_for": 5, "unique_until": "finish"}, "unique_until", '"success" or "start"'),
        ({"unique_until": "start"}, "unique_until", "needs unique_for"),
        ({"expires_in": -1}, "expires_in", "above 0"),
        ({"expires_at": "tomorrow"}, "expires_at", "RFC 3339"),
        ({"expires_at": 5}, "expires_at", "datetime"),
        ({"expires_in": 5, "expires_at": "2030-01-01T00:00:00Z"}, "expires_in", "not both"),
        ({"track": "yes"}, "track", "True or False"),
    ],
)
def test_bad_enterprise_options_are_named(
    app: App, options: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        app.task(name=f"t_{field}", **options)(lambda: None)  # type: ignore[call-overload]
    assert caught.value.field == field
    assert words in str(caught.value)
    assert f"t_{field}" in str(caught.value)


def test_apply_async_takes_the_enterprise_options(app: App) -> None:
    @app.task
    def work(n: int) -> None:
        del n

    with app.testing.fake() as fake:
        work.apply_async((1,), unique_for=30, track=True)
    assert fake[0].custom == {"unique_for": 30, "track": 1}


def test_job_builder_writes_the_same_keys() -> None:
    client = Client("tcp://127.0.0.1:1")
    job = client.job("sync", 7)
    job.unique_for = 60
    job.unique_until = "success"
    job.track = True
    job.expires_in = 30
    job.custom = {"team": "x"}
    custom = job.payload().custom
    assert custom is not None
    assert custom["unique_for"] == 60
    assert custom["unique_until"] == "success"
    assert custom["track"] == 1
    assert custom["team"] == "x"
    assert parse_rfc3339(custom["expires_at"]) > datetime.now(timezone.utc)
    job.expires_at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValidationError, match="not both"):
        job.payload()
    job.expires_in = None
    job.unique_for = -5
    with pytest.raises(ValidationError) as caught:
        job.payload()
    assert caught.value.field == "unique_for"
    client.close()


def test_track_set_document_checks_and_formats() -> None:
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    doc = track_set_document("j1", 40, "parsing", timedelta(minutes=30), now=now)
    assert doc == {
        "jid": "j1",
        "percent": 40,
        "desc": "parsing",
        "reserve_until": "2030-01-01T00:30:00.000000Z",
    }
    assert track_set_document("j1") == {"jid": "j1"}
    for kwargs, field in (
        ({"percent": 101}, "percent"),
        ({"percent": True}, "percent"),
        ({"desc": 5}, "desc"),
        ({"reserve_until": now - timedelta(seconds=1)}, "reserve_until"),
        ({"reserve_until": 30}, "reserve_until"),
    ):
        with pytest.raises(ValidationError) as caught:
            track_set_document("j1", now=now, **kwargs)
        assert caught.value.field == field
    with pytest.raises(ValidationError):
        track_set_document("")


def test_enterprise_custom_writes_whole_seconds_as_integers() -> None:
    assert enterprise_custom(unique_for=2.0) == {"unique_for": 2}
    assert enterprise_custom(unique_for=1.5) == {"unique_for": 1.5}
    assert enterprise_custom(track=False) == {}


def test_progress_reply_is_typed() -> None:
    unknown = decode_progress(BulkReply(b'{"jid":"j","state":"unknown","updated_at":""}'))
    assert unknown.state == "unknown"
    assert unknown.updated_at is None
    assert unknown.percent is None
    known = decode_progress(
        BulkReply(
            b'{"jid":"j","percent":40,"desc":"x","state":"working",'
            b'"updated_at":"2030-01-01T00:00:00.123456789Z"}'
        )
    )
    assert known.percent == 40
    assert known.desc == "x"
    assert known.updated_at == datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    with pytest.raises(kaffi.RemoteProtocolError):
        decode_progress(BulkReply(b'{"jid":"j"}'))


def test_track_in_a_testing_mode_keeps_the_reports(app: App) -> None:
    contexts: list[kaffi.JobContext] = []

    @app.task(track=True)
    def work() -> None:
        ctx = kaffi.current_job()
        ctx.track(percent=30, desc="start")
        ctx.track(percent=60)
        contexts.append(ctx)

    @app.task(track=True)
    async def awork() -> None:
        ctx = kaffi.current_job()
        await ctx.track_async(desc="async")
        contexts.append(ctx)

    with app.testing.inline():
        jid = work.delay()
        ajid = awork.delay()
    assert contexts[0].tracked == [
        {"jid": jid, "percent": 30, "desc": "start"},
        {"jid": jid, "percent": 60},
    ]
    assert contexts[1].tracked == [{"jid": ajid, "desc": "async"}]

    @app.task
    def bad() -> None:
        kaffi.current_job().track(percent=150)

    with app.testing.inline(), pytest.raises(ValidationError, match="percent"):
        bad.delay()


def test_progress_in_a_testing_mode_is_refused_without_reaching_for_a_server(app: App) -> None:
    """Like app.batch_status: a testing mode has no server, so app.progress says where the
    reports are instead of connecting somewhere (a ConnectError, or another Faktory)."""

    async def read_async(jid: str) -> kaffi.Progress:
        return await app.progress_async(jid)

    for mode in (app.testing.inline, app.testing.fake):
        with mode():
            with pytest.raises(kaffi.ConfigurationError, match=r"current_job\(\)\.tracked"):
                app.progress("0123456789abcdef01234567")
            with pytest.raises(kaffi.ConfigurationError, match=r"app\.progress\(\)"):
                asyncio.run(read_async("0123456789abcdef01234567"))
