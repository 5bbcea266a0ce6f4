"""@app.task, Task options and the push path (no server: fake mode and a recording delivery)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kaffi import App, Task
from kaffi.app.push import PushContext
from kaffi.errors import ConfigurationError, ValidationError
from kaffi.protocol.models import RejectedJob, parse_rfc3339


class Recorder:
    """A Delivery that keeps the payloads and the size of every bulk chunk."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.chunks: list[int] = []

    def push(self, payload: dict[str, Any]) -> str:
        self.payloads.append(payload)
        return str(payload["jid"])

    async def push_async(self, payload: dict[str, Any]) -> str:
        return self.push(payload)

    def push_bulk(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        self.chunks.append(len(payloads))
        self.payloads.extend(payloads)
        return [RejectedJob(jid=payloads[0]["jid"], reason="test", payload=payloads[0])]

    async def push_bulk_async(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        return self.push_bulk(payloads)


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def sent(app: App) -> Recorder:
    recorder = Recorder()
    app.delivery = recorder
    return recorder


# -- declaring ----------------------------------------------------------------------------


def test_decorator_forms_and_defaults(app: App) -> None:
    @app.task
    def plain(a: int) -> int:
        return a * 2

    @app.task(name="other.name", queue="low", retry=3, reserve_for=120, backtrace=5)
    async def configured() -> None:
        return None

    assert isinstance(plain, Task)
    assert plain.name == "plain"
    assert plain.queue == "default"
    assert plain.retry == 25
    assert plain.reserve_for == 1800
    assert not plain.is_async
    assert plain(4) == 8
    assert plain.__name__ == "plain"
    assert configured.name == "other.name"
    assert configured.queue == "low"
    assert configured.retry == 3
    assert configured.reserve_for == 120
    assert configured.backtrace == 5
    assert configured.is_async
    assert app.tasks == {"plain": plain, "other.name": configured}
    assert "queue='low'" in repr(configured)


def test_duplicate_jobtype_raises(app: App) -> None:
    @app.task
    def send() -> None:
        return None

    with pytest.raises(ConfigurationError, match="jobtype 'send' is already registered"):

        @app.task(name="send")
        def other() -> None:
            return None


def test_register_without_decorating(app: App) -> None:
    def handler(x: int) -> None:
        del x

    assert app.register("Handler", handler) is app
    assert app.tasks["Handler"].fn is handler
    with pytest.raises(ConfigurationError, match="already registered"):
        app.register("Handler", lambda: None)


def test_task_with_var_keyword_is_refused(app: App) -> None:
    with pytest.raises(ConfigurationError, match=r"\*\*kw cannot be sent"):

        @app.task
        def bad(**kw: Any) -> None:
            del kw

    assert app.tasks == {}


def test_not_a_function(app: App) -> None:
    with pytest.raises(ConfigurationError, match="a task must be a function"):
        app.register("x", 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pass name="):
        app.register("", lambda: None)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"queue": "no spaces"}, "queue"),
        ({"reserve_for": 100000}, "reserve_for"),
        ({"retry": -2}, "retry"),
        ({"backtrace": -1}, "backtrace"),
    ],
)
def test_bad_options_at_declaration_name_the_option(
    app: App, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=f"task 'job': bad option {field}") as info:
        app.task(name="job", **options)(lambda: None)
    assert info.value.field == field
    assert app.tasks == {}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"queue": "a/b"}, "queue"),
        ({"reserve_for": 86_401}, "reserve_for"),
        ({"retry": -5}, "retry"),
        ({"at": "tomorrow"}, "at"),
        ({"at": "2030-01-01 12:00"}, "at"),
        ({"countdown": -1}, "countdown"),
        ({"countdown": "soon"}, "countdown"),
        ({"countdown": float("inf")}, "countdown"),
        ({"jid": "short"}, "jid"),
        ({"custom": {"x": object()}}, "custom"),
        ({"at": datetime(2030, 1, 1, tzinfo=timezone.utc), "countdown": 5}, "countdown"),
    ],
)
def test_bad_options_at_options_time_name_the_option(
    app: App, options: dict[str, Any], field: str
) -> None:
    @app.task
    def job() -> None:
        return None

    with pytest.raises(ValidationError, match=field) as info:
        job.options(**options)
    assert info.value.field == field


# -- pushing ------------------------------------------------------------------------------


def test_delay_builds_the_payload(app: App, sent: Recorder) -> None:
    @app.task(queue="mail", custom={"team": "x"}, backtrace=3)
    def send_email(to: str, times: int = 1) -> None:
        del to, times

    jid = send_email.delay("a@b.c", times=2)
    [payload] = sent.payloads
    assert payload["jid"] == jid
    assert jid is not None
    assert len(jid) == 24
    assert payload["jobtype"] == "send_email"
    assert payload["queue"] == "mail"
    assert payload["args"] == ["a@b.c", 2]
    assert payload["retry"] == 25
    assert payload["reserve_for"] == 1800
    assert payload["custom"] == {"team": "x"}
    assert payload["backtrace"] == 3
    assert "at" not in payload


def test_each_delay_gets_a_new_jid(app: App, sent: Recorder) -> None:
    @app.task
    def noop() -> None:
        return None

    assert noop.delay() != noop.delay()


def test_validation_error_sends_nothing(app: App, sent: Recorder) -> None:
    @app.task
    def charge(amount: int) -> None:
        del amount

    with pytest.raises(ValidationError, match="task 'charge': argument 'amount'"):
        charge.delay("a lot")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="argument 'amount' is required"):
        charge.delay()  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="not a parameter"):
        charge.delay(1, currency="EUR")  # type: ignore[call-arg]
    assert sent.payloads == []


def test_options_returns_a_configured_copy(app: App, sent: Recorder) -> None:
    @app.task(queue="a")
    def job(x: int) -> None:
        del x

    low = job.options(queue="b", retry=0, reserve_for=60, custom={"k": 1}, backtrace=2)
    low.delay(1)
    job.delay(2)
    first, second = sent.payloads
    assert (first["queue"], first["retry"], first["reserve_for"]) == ("b", 0, 60)
    assert first["custom"] == {"k": 1}
    assert first["backtrace"] == 2
    assert second["queue"] == "a"
    assert second["retry"] == 25
    assert job.queue == "a"
    assert low.name == "job"
    assert app.tasks["job"] is job


def test_at_as_datetime_and_string(app: App, sent: Recorder) -> None:
    @app.task
    def job() -> None:
        return None

    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    job.options(at=when).delay()
    job.options(at="2030-01-02T03:04:05Z").delay()
    assert sent.payloads[0]["at"] == "2030-01-02T03:04:05.000000Z"
    assert sent.payloads[1]["at"] == "2030-01-02T03:04:05.000000Z"


@pytest.mark.parametrize("countdown", [60, 60.0, timedelta(minutes=1)])
def test_countdown_becomes_at_counted_from_each_delay(
    app: App, sent: Recorder, countdown: float | timedelta
) -> None:
    @app.task
    def job() -> None:
        return None

    later = job.options(countdown=countdown)
    before = datetime.now(timezone.utc)
    later.delay()
    after = datetime.now(timezone.utc)
    at = parse_rfc3339(sent.payloads[0]["at"])
    assert before + timedelta(seconds=60) <= at <= after + timedelta(seconds=60)


def test_new_schedule_replaces_the_old_one(app: App, sent: Recorder) -> None:
    @app.task
    def job() -> None:
        return None

    job.options(countdown=30).options(at="2030-01-01T00:00:00Z").delay()
    assert sent.payloads[0]["at"] == "2030-01-01T00:00:00.000000Z"
    scheduled = job.options(at="2030-01-01T00:00:00Z").options(countdown=0)
    assert scheduled.at is None
    assert scheduled.countdown == timedelta(0)


def test_jid_option(app: App, sent: Recorder) -> None:
    @app.task
    def job() -> None:
        return None

    assert job.options(jid="my-own-jid-1").delay() == "my-own-jid-1"
    assert sent.payloads[0]["jid"] == "my-own-jid-1"


def test_apply_async_celery_spelling(app: App, sent: Recorder) -> None:
    @app.task
    def add(a: int, b: int = 0) -> None:
        del a, b

    add.apply_async((1,), {"b": 2}, queue="math", eta="2030-01-01T00:00:00Z")
    add.apply_async(kwargs={"a": 5})
    first, second = sent.payloads
    assert first["args"] == [1, 2]
    assert first["queue"] == "math"
    assert first["at"] == "2030-01-01T00:00:00.000000Z"
    assert second["args"] == [5]
    with pytest.raises(ValidationError, match="unknown option 'expires'"):
        add.apply_async((1,), expires=10)
    with pytest.raises(ValidationError, match="eta= or at="):
        add.apply_async((1,), eta="2030-01-01T00:00:00Z", at="2030-01-01T00:00:00Z")


def test_delay_many_pushes_in_chunks(app: App, sent: Recorder) -> None:
    @app.task
    def square(n: int) -> None:
        del n

    rejected = square.delay_many((i,) for i in range(2500))
    assert sent.chunks == [1000, 1000, 500]
    assert [p["args"] for p in sent.payloads[:3]] == [[0], [1], [2]]
    assert len(rejected) == 3
    assert rejected[0].reason == "test"


def test_delay_many_bad_item_in_a_later_chunk_says_what_was_sent(app: App, sent: Recorder) -> None:
    @app.task
    def square(n: int) -> None:
        del n

    items: list[Any] = [(i,) for i in range(2500)]
    items[2100] = ("x",)
    message = (
        r"delay_many item 2100: task 'square': argument 'n'.*; jobs 0 to 1999 were already "
        r"pushed, nothing from job 2000 on"
    )
    with pytest.raises(ValidationError, match=message):
        square.delay_many(iter(items))
    assert sent.chunks == [1000, 1000]
    with pytest.raises(ValidationError, match=r"delay_many item 5: .*; nothing was sent"):
        square.delay_many([(1,)] * 5 + [("x",)])
    assert sent.chunks == [1000, 1000]


def test_delay_many_accepts_keyword_dicts(app: App, sent: Recorder) -> None:
    @app.task
    def greet(name: str, punctuation: str = "!") -> None:
        del name, punctuation

    square_rejected = greet.delay_many([("a",), {"name": "b", "punctuation": "?"}])
    assert [p["args"] for p in sent.payloads] == [["a"], ["b", "?"]]
    assert len(square_rejected) == 1


def test_delay_many_error_names_the_item_and_sends_nothing(app: App, sent: Recorder) -> None:
    @app.task
    def square(n: int) -> None:
        del n

    with pytest.raises(ValidationError, match=r"delay_many item 2: task 'square': argument 'n'"):
        square.delay_many([(1,), (2,), ("x",)])
    with pytest.raises(ValidationError, match=r"delay_many item 0: .*expected a tuple"):
        square.delay_many(["1"])
    assert sent.payloads == []


def test_delay_async(app: App, sent: Recorder) -> None:
    @app.task
    async def job(x: int) -> None:
        del x

    jid = asyncio.run(job.delay_async(3))
    assert sent.payloads[0]["jid"] == jid
    assert sent.payloads[0]["args"] == [3]
    rejected = asyncio.run(job.delay_many_async([(1,), (2,)]))
    assert sent.chunks == [2]
    assert len(rejected) == 1


# -- push middleware ----------------------------------------------------------------------


def stamp(ctx: PushContext, next: Callable[[], None]) -> None:
    ctx.job.custom = {**(ctx.job.custom or {}), "trace": "t-1"}
    next()


async def stamp_async(ctx: PushContext, next: Callable[[], Awaitable[None]]) -> None:
    ctx.job.custom = {**(ctx.job.custom or {}), "span": "s-1"}
    await next()


def test_push_middleware_stamps_every_push(app: App, sent: Recorder) -> None:
    @app.task(custom={"team": "x"})
    def job(x: int) -> None:
        del x

    assert app.use_push(stamp).use_push(stamp_async) is app
    job.delay(1)
    asyncio.run(job.delay_async(2))
    job.delay_many([(3,)])
    for payload in sent.payloads:
        assert payload["custom"] == {"team": "x", "trace": "t-1", "span": "s-1"}
    # The task's own options are untouched by what a middleware did to one push.
    assert job.custom == {"team": "x"}


def test_push_middleware_sees_task_and_jid(app: App, sent: Recorder) -> None:
    seen: list[Any] = []

    def observe(ctx: PushContext, next: Callable[[], None]) -> None:
        next()
        seen.append((ctx.task, ctx.jid))

    @app.task
    def job() -> None:
        return None

    app.use_push(observe)
    jid = job.delay()
    assert seen == [(job, jid)]


def test_push_middleware_can_drop_a_job(app: App, sent: Recorder) -> None:
    @app.task
    def job() -> None:
        return None

    app.use_push(lambda ctx, next: None)
    # The caller can tell: no jid, and the bulk outcome counts the drops apart.
    assert job.delay() is None
    assert job.apply_async() is None
    assert asyncio.run(job.delay_async()) is None
    outcome = job.delay_many([(), ()])
    assert outcome == []
    assert outcome.dropped == 2
    outcome = asyncio.run(job.delay_many_async([(), (), ()]))
    assert outcome == []
    assert outcome.dropped == 3
    assert sent.payloads == []
    assert sent.chunks == []


def test_a_middleware_that_drops_some_jobs_leaves_the_others_counted_apart(
    app: App, sent: Recorder
) -> None:
    @app.task
    def job(n: int) -> None:
        del n

    def odd_only(ctx: PushContext, next: Callable[[], None]) -> None:
        if ctx.job.args[0] % 2:
            next()

    app.use_push(odd_only)
    assert job.delay(2) is None
    jid = job.delay(3)
    assert jid is not None
    assert len(jid) == 24
    outcome = job.delay_many([(n,) for n in range(5)])
    # The Recorder rejects the first job of each chunk: rejected and dropped apart.
    assert [r.payload["args"] for r in outcome] == [[1]]
    assert outcome.dropped == 3
    assert [p["args"] for p in sent.payloads] == [[3], [1], [3]]
    assert sent.chunks == [2]


def test_middleware_must_be_callable(app: App) -> None:
    with pytest.raises(ConfigurationError, match="middleware must be a function"):
        app.use("nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="middleware must be a function"):
        app.use_push(None)  # type: ignore[arg-type]


def test_types_defined_inside_a_function_resolve(app: App, sent: Recorder) -> None:
    from pydantic import BaseModel

    class Order(BaseModel):
        id: int

    @app.task
    def ship(order: Order) -> None:
        del order

    ship.delay(Order(id=3))
    assert sent.payloads[0]["args"] == [{"id": 3}]
    assert ship.decode_args([{"id": 4}]) == ([Order(id=4)], {})
    with pytest.raises(ValidationError, match="argument 'order'"):
        ship.delay({"id": "x"})  # type: ignore[arg-type]


def test_delay_is_strict_by_default_and_lax_with_strict_false() -> None:
    for strict in (True, False):
        app = App(testing="fake", strict=strict)

        @app.task
        def count(n: int) -> None:
            del n

        if strict:
            for value in ("7", True):
                with pytest.raises(ValidationError, match="argument 'n'"):
                    count.delay(value)  # type: ignore[arg-type]
            assert len(app.testing.jobs) == 0
        else:
            count.delay("7")  # type: ignore[arg-type]
            count.delay(True)
            assert [job.args for job in app.testing.jobs] == [[7], [1]]


def test_strict_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match=r"App\(strict=...\) must be True or False"):
        App(strict="yes")  # type: ignore[arg-type]


def test_unknown_task_option_is_refused_as_a_call_would(app: App) -> None:
    # The options are one TypedDict (**options: Unpack[TaskOptionArgs]): a name outside
    # it fails as an unknown keyword always did, before anything is registered.
    with pytest.raises(TypeError, match="unexpected keyword argument 'queues'"):
        app.task(queues="low")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        app.task(lambda: None, bogus=1)  # type: ignore[call-overload]
    assert app.tasks == {}


def test_task_options_take_the_shared_fields(app: App) -> None:
    @app.task(queue="low", retry=2, unique_for=60, unique_until="start", track=True)
    def job() -> None:
        return None

    assert (job.queue, job.retry) == ("low", 2)
    options = job.options(expires_in=30)
    payload = options.payload((), {})
    assert payload["custom"]["unique_for"] == 60
    assert payload["custom"]["unique_until"] == "start"
    assert payload["custom"]["track"] == 1
    assert "expires_at" in payload["custom"]
