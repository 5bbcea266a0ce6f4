"""``App``: the task registry, the middleware and the clients a project shares.

An App is cheap to create and opens nothing until it is used: the pooled
``app.client`` and ``app.async_client`` are built on first access from the URL and client
options given to the App (or the environment, see :func:`kaffi.client.resolve_settings`).
Workers (``app.worker()``) and the command line find their tasks and middleware here.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, overload

from kaffi._bases import Closing
from kaffi.app.middleware import Middleware
from kaffi.app.push import Delivery
from kaffi.app.signature import TaskSignature
from kaffi.app.task import Task, TaskOptions
from kaffi.app.workers import WorkerHandle, build_worker
from kaffi.errors import ConfigurationError, ValidationError
from kaffi.protocol.models import DEFAULT_RESERVE_FOR, DEFAULT_RETRY
from kaffi.protocol.options import ENTERPRISE_OPTIONS, EnterpriseOptionArgs

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from kaffi.app.batch import Batch
    from kaffi.app.testing import Testing
    from kaffi.client import AsyncClient, Client, ConnectionSettings, Mutation
    from kaffi.client.batch import CallbackLike
    from kaffi.periodic.schedule import Schedule
    from kaffi.protocol.batches import BatchStatus
    from kaffi.protocol.enterprise import Progress

__all__ = ["App", "Mutate"]

P = ParamSpec("P")
R = TypeVar("R")

TestingMode = Literal["inline", "fake"]


class Mutate:
    """``app.mutate.retries`` / ``.scheduled`` / ``.dead``: the client's chainable
    :class:`~kaffi.client.Mutation` on that set, e.g.
    ``app.mutate.dead.of_type("send_email").discard()``."""

    def __init__(self, app: App) -> None:
        self._app = app

    @property
    def retries(self) -> Mutation:
        """A Mutation over the retries set (jobs waiting for their next attempt)."""
        return self._app.client.retries

    @property
    def scheduled(self) -> Mutation:
        """A Mutation over the scheduled set (jobs pushed with ``at`` or ``countdown``)."""
        return self._app.client.scheduled

    @property
    def dead(self) -> Mutation:
        """A Mutation over the dead set (jobs that ran out of retries)."""
        return self._app.client.dead


class TaskOptionArgs(EnterpriseOptionArgs, total=False):
    """The job options ``@app.task(...)`` takes, handed on as keywords (None: the default)."""

    queue: str | None
    retry: int | None
    reserve_for: int | None
    backtrace: int | None
    custom: dict[str, Any] | None


_TASK_OPTION_NAMES = TaskOptionArgs.__optional_keys__


class App(Closing):
    """A kaffi application: tasks, middleware, clients.

    ``url`` and ``client_options`` (``host``, ``port``, ``password``, ``tls``,
    ``timeout``, ``pool_size``, ...) configure ``app.client`` and ``app.async_client``;
    without them the environment decides (``FAKTORY_PROVIDER``, ``FAKTORY_URL``).
    ``testing="inline"`` or ``"fake"`` builds an App that is always in that testing mode.
    ``strict`` (True by default): ``.delay()`` checks its arguments in pydantic's strict
    mode, so ``"7"`` or ``True`` for an ``int`` parameter is refused; ``strict=False``
    keeps pydantic's lax coercion (``"7"`` is sent as ``7``). Workers always convert the
    JSON they receive laxly (a datetime arrives as a string).
    ``tracing=True`` adds OpenTelemetry spans across push and worker (needs
    ``kaffi[otel]``; see :class:`kaffi.contrib.otel.Tracing`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        testing: TestingMode | None = None,
        strict: bool = True,
        tracing: bool = False,
        **client_options: Any,
    ) -> None:
        if not isinstance(strict, bool):
            raise ConfigurationError(f"App(strict=...) must be True or False, got {strict!r}")
        self.url = url
        #: Whether ``.delay()`` validates arguments in pydantic's strict mode.
        self.strict = strict
        self.client_options = _check_client_options(client_options)
        #: jobtype -> Task.
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: Worker-side middleware, around every job, in registration order.
        self.middleware: list[Middleware] = []
        #: Client-side middleware, around every push, in registration order.
        self.push_middleware: list[Middleware] = []
        #: name -> periodic Schedule (see :meth:`periodic`), run by ``kaffi beat``.
        self.periodic_schedules: dict[str, Schedule] = {}
        #: Where pushes go instead of the network while a testing mode is active.
        self.delivery: Delivery | None = None
        self._settings: ConnectionSettings | None = None
        self._client: Client | None = None
        self._async_client: AsyncClient | None = None
        self._testing: Testing | None = None
        self._lock = threading.Lock()
        if testing is not None:
            self.testing.enable(testing)
        if tracing:
            # The one import of an integration from here, and only when asked for.
            from kaffi.contrib.otel import Tracing

            Tracing().install(self)

    # -- tasks -----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, /, *, name: str | None = None, **options: Unpack[TaskOptionArgs]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Unpack[TaskOptionArgs],
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue="low")``.

        The jobtype is the function's ``__name__`` unless ``name=`` says otherwise; a
        jobtype can be registered once. The options (:class:`TaskOptionArgs`: ``queue``,
        ``retry``, ``reserve_for``, ``backtrace``, ``custom``, and Faktory Enterprise's
        ``unique_for``, ``unique_until``, ``expires_at``/``expires_in`` and ``track``, see
        ``docs/enterprise.md``) are checked now, naming a bad one.
        """

        localns = sys._getframe(1).f_locals
        unknown = options.keys() - _TASK_OPTION_NAMES
        if unknown:
            raise TypeError(f"App.task() got an unexpected keyword argument {min(unknown)!r}")

        def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(self._build_task(func, localns=localns, name=name, **options))

        if fn is not None:
            return decorate(fn)
        return decorate

    def _register(self, task: Task[P, R]) -> Task[P, R]:
        """Add ``task`` to :attr:`tasks`, refusing a jobtype that is taken."""
        with self._lock:
            existing = self.tasks.get(task.name)
            if existing is not None:
                raise ConfigurationError(
                    f"jobtype {task.name!r} is already registered to {_describe(existing.fn)};"
                    f" {_describe(task.fn)} needs another name (pass name=...)"
                )
            self.tasks[task.name] = task
        return task

    def _build_task(
        self,
        fn: Callable[P, R],
        *,
        localns: dict[str, Any] | None = None,
        name: str | None,
        **options: Unpack[TaskOptionArgs],
    ) -> Task[P, R]:
        if isinstance(fn, Task):
            raise ConfigurationError(f"{fn!r} is already a task")
        if not callable(fn):
            raise ConfigurationError(f"a task must be a function, got {fn!r}")
        jobtype = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(jobtype, str) or not jobtype:
            raise ConfigurationError(
                f"cannot tell the jobtype of {fn!r}: pass name= (a non-empty string)"
            )
        queue, retry, reserve_for = (
            options.get("queue"),
            options.get("retry"),
            options.get("reserve_for"),
        )
        enterprise = cast(
            "EnterpriseOptionArgs", {k: v for k, v in options.items() if k in ENTERPRISE_OPTIONS}
        )
        task_options = TaskOptions(
            jobtype,
            queue=queue if queue is not None else "default",
            retry=retry if retry is not None else DEFAULT_RETRY,
            reserve_for=reserve_for if reserve_for is not None else DEFAULT_RESERVE_FOR,
            backtrace=options.get("backtrace"),
            custom=options.get("custom"),
            **enterprise,
        )
        signature = TaskSignature(fn, jobtype, localns, strict=self.strict)
        return Task(self, fn, jobtype, task_options, signature)

    def unregistered_task(self, name: str, fn: Callable[..., Any]) -> Task[Any, Any]:
        """A :class:`~kaffi.app.task.Task` running ``fn`` for jobtype ``name``, built as
        :meth:`register` builds one but not added to :attr:`tasks` (a worker's
        ``registry=`` uses it: those jobtypes are that worker's alone). A Task given as
        ``fn`` lends its function."""
        if isinstance(fn, Task):
            fn = fn.fn
        return self._build_task(fn, name=name)

    def register(self, name: str, fn: Callable[..., Any]) -> App:
        """Register ``fn`` under the jobtype ``name`` without decorating it (as in the Node
        client's ``faktory.register``); returns the App for chaining."""
        self._register(self._build_task(fn, name=name, localns=sys._getframe(1).f_locals))
        return self

    def periodic(
        self,
        task: Task[Any, Any] | str,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        tz: str | None = None,
        queue: str | None = None,
        retry: int | None = None,
        reserve_for: int | None = None,
        custom: Mapping[str, Any] | None = None,
        catch_up: bool = False,
    ) -> Schedule:
        """Run ``task`` periodically: ``cron="0 7 * * mon-fri"`` (five fields or a nickname
        like ``@hourly``, read in ``tz``, an IANA zone, UTC by default) or
        ``every=timedelta(seconds=30)`` (at least 1 s), with ``args``/``kwargs``
        validated now against the task's signature, as ``.delay()`` would.

        ``name`` (default: the jobtype) must be unique in the App; the job options default
        to the task's. ``catch_up=True`` pushes occurrences a running scheduler missed
        (server unreachable, process stalled) late, once, instead of skipping them.
        ``kaffi beat APP`` or ``kaffi worker APP --beat`` push the occurrences; see
        :mod:`kaffi.periodic`. Returns the registered
        :class:`~kaffi.periodic.schedule.Schedule`.
        """
        from kaffi.periodic.schedule import CronTrigger, EveryTrigger, Schedule, parse_zone

        if isinstance(task, str):
            found = self.tasks.get(task)
            if found is None:
                raise ConfigurationError(f"periodic: no task is registered as {task!r}")
            task = found
        if not isinstance(task, Task) or task.app is not self:
            raise ConfigurationError(f"periodic: {task!r} is not a task of this App")
        zone = parse_zone(tz)
        trigger: CronTrigger | EveryTrigger
        if cron is not None and every is None:
            trigger = CronTrigger(cron, zone)
        elif every is not None and cron is None:
            trigger = EveryTrigger(every, zone)
        else:
            raise ConfigurationError(f"periodic {task.name!r}: give exactly one of cron= or every=")
        configured = task.options(queue=queue, retry=retry, reserve_for=reserve_for, custom=custom)
        if configured.at is not None or configured.countdown is not None:
            raise ConfigurationError(
                f"periodic {task.name!r}: the task has at= or countdown= set; its schedule"
                " decides when it runs"
            )
        # The same binding and validation as .delay(): a bad argument fails here, now.
        try:
            payload = configured.payload(tuple(args), dict(kwargs or {}))
        except ValidationError as exc:
            reason = str(exc).removesuffix("; nothing was sent")
            raise ValidationError(f"periodic: {reason}", field=exc.field) from None
        job = {k: v for k, v in payload.items() if k not in ("jid", "jobtype", "args")}
        schedule = Schedule(
            name=name if name is not None else task.name,
            jobtype=task.name,
            trigger=trigger,
            args=payload["args"],
            job=job,
            catch_up=bool(catch_up),
        )
        with self._lock:
            if schedule.name in self.periodic_schedules:
                raise ConfigurationError(
                    f"periodic name {schedule.name!r} is already registered in this App;"
                    " pass name=... to tell the schedules apart"
                )
            self.periodic_schedules[schedule.name] = schedule
        return schedule

    # -- middleware ------------------------------------------------------------------------

    def use(self, middleware: Middleware) -> App:
        """Add a worker middleware (``async def mw(ctx, next)`` or ``def mw(ctx, next)``)
        around every job; returns the App for chaining."""
        self.middleware.append(_check_middleware(middleware))
        return self

    def use_push(self, middleware: Middleware) -> App:
        """Add a push middleware around every job this App sends; returns the App."""
        self.push_middleware.append(_check_middleware(middleware))
        return self

    # -- clients ---------------------------------------------------------------------------

    @property
    def settings(self) -> ConnectionSettings:
        """Where the clients connect, resolved on first use (so the environment is read
        when the App is used, not when it is imported)."""
        if self._settings is None:
            from kaffi.client import resolve_settings

            given = self.client_options.get("settings")
            if given is not None:
                self._settings = given
            else:
                options = {k: v for k, v in self.client_options.items() if k in _SETTINGS_OPTIONS}
                self._settings = resolve_settings(self.url, **options)
        return self._settings

    def _pool_options(self) -> dict[str, Any]:
        # What the clients take besides where to connect (resolved once, in settings).
        return {k: v for k, v in self.client_options.items() if k not in _SETTINGS_OPTIONS}

    @property
    def client(self) -> Client:
        """The pooled, thread-safe :class:`~kaffi.client.Client`, created on first use."""
        client = self._client
        if client is None:
            client = self._make_client("Client", "_client")
        return client

    @property
    def async_client(self) -> AsyncClient:
        """The pooled :class:`~kaffi.client.AsyncClient`, created on first use. Its
        connections belong to the event loop that first uses them: close it with
        ``await app.aclose()`` before that loop ends."""
        client = self._async_client
        if client is None:
            client = self._make_client("AsyncClient", "_async_client")
        return client

    def _make_client(self, class_name: str, attribute: str) -> Any:
        """The client kept in ``attribute``, built once under the lock so that threads
        racing on first use share one pool (the per-push path only reads the attribute)."""
        import kaffi.client

        with self._lock:
            client = getattr(self, attribute)
            if client is None:
                factory = getattr(kaffi.client, class_name)
                client = factory(settings=self.settings, **self._pool_options())
                setattr(self, attribute, client)
            return client

    def progress(self, jid: str) -> Progress:
        """A tracked job's progress (Faktory Enterprise ``TRACK GET``): its state, and
        the percent and description its job last reported with ``current_job().track()``.
        An open-source server raises :class:`~kaffi.errors.EnterpriseRequired`."""
        self._no_progress_in_testing()
        return self.client.track_get(jid)

    async def progress_async(self, jid: str) -> Progress:
        """:meth:`progress` for asyncio code (uses ``app.async_client``)."""
        self._no_progress_in_testing()
        return await self.async_client.track_get(jid)

    def _no_progress_in_testing(self) -> None:
        self._needs_enterprise_server(
            "app.progress()", "a job's track() reports are kept in current_job().tracked instead"
        )

    def _needs_enterprise_server(self, call: str, instead: str) -> None:
        """Refuse ``call`` in a testing mode, saying what to read ``instead``: it must not
        reach for a server (a local Faktory would answer about other jobs; none gives a
        connection error)."""
        if self.delivery is not None:
            raise ConfigurationError(
                f"{call} needs a Faktory Enterprise server, and a testing mode has none: {instead}"
            )

    # -- Faktory Enterprise batches ---------------------------------------------------------

    def batch(
        self,
        *,
        description: str | None = None,
        success: CallbackLike | None = None,
        complete: CallbackLike | None = None,
        parent: Batch | str | None = None,
    ) -> Batch:
        """A new Faktory Enterprise batch, for a ``with`` (or ``async with``) block::

            with app.batch(description="import", success=report.job("ok")) as batch:
                for f in files:
                    import_file.delay(f)  # each job carries custom.bid = batch.bid

        Entering the block sends ``BATCH NEW``; every push made in the block (``.delay``,
        ``delay_many``, ``apply_async``, ``app.client.push``, asyncio code and tasks
        started in it) joins the batch; leaving it sends ``BATCH COMMIT``. An exception
        in the block leaves the batch uncommitted (logged, noted on the exception) and
        propagates. ``success`` and ``complete`` are callback jobs (``task.job(...)``; at
        least one); ``parent`` (a Batch or a bid) makes this a child batch. See
        :class:`~kaffi.app.batch.Batch` and ``docs/enterprise.md``."""
        from kaffi.app.batch import Batch

        return Batch(
            self, description=description, success=success, complete=complete, parent=parent
        )

    #: :meth:`batch` under the name the other asyncio methods have: the same
    #: :class:`~kaffi.app.batch.Batch` serves ``with`` and ``async with`` (it sends
    #: through ``app.async_client`` in the latter).
    batch_async = batch

    def batch_open(self, bid: str) -> Batch:
        """The existing batch ``bid``, to add jobs to in a ``with`` block (``BATCH OPEN``
        on entering, ``BATCH COMMIT`` on leaving), or with ``.add(job)``."""
        from kaffi.app.batch import Batch

        return Batch(self, bid=bid)

    def batch_status(self, bid: str) -> BatchStatus:
        """A batch's status (Faktory Enterprise ``BATCH STATUS``), typed: ``total``,
        ``pending``, ``failed``, and the callbacks' states (``status.complete``,
        ``status.success``). An unknown batch raises
        :class:`~kaffi.errors.BatchNotFound`; an open-source server
        :class:`~kaffi.errors.EnterpriseRequired`."""
        self._no_batch_status_in_testing()
        return self.client.batch_status(bid)

    async def batch_status_async(self, bid: str) -> BatchStatus:
        """:meth:`batch_status` for asyncio code (uses ``app.async_client``)."""
        self._no_batch_status_in_testing()
        return await self.async_client.batch_status(bid)

    def _no_batch_status_in_testing(self) -> None:
        self._needs_enterprise_server(
            "app.batch_status()",
            "read app.testing.batches (what each batch was created with and whether it was"
            " committed) and the jobs' custom['bid'] instead",
        )

    @property
    def mutate(self) -> Mutate:
        """``app.mutate.retries`` / ``.scheduled`` / ``.dead``: chainable Mutations."""
        return Mutate(self)

    def close(self) -> None:
        """Close the sync client's connections (the App stays usable: it reconnects)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close both clients' connections."""
        with self._lock:
            client, self._async_client = self._async_client, None
        if client is not None:
            await client.close()
        self.close()

    # -- testing and workers ---------------------------------------------------------------

    @property
    def testing(self) -> Testing:
        """``app.testing.inline()`` and ``app.testing.fake()`` (see :mod:`kaffi.app.testing`)."""
        if self._testing is None:
            from kaffi.app.testing import Testing

            self._testing = Testing(self)
        return self._testing

    def worker(self, **options: Any) -> WorkerHandle:
        """A :class:`~kaffi.worker.Worker` for this App (``concurrency=``, ``queues=``, ...),
        built through the registered factory (:mod:`kaffi.app.workers`)."""
        return build_worker(self, options)

    def __repr__(self) -> str:
        return f"<App tasks={len(self.tasks)} middleware={len(self.middleware)}>"


#: The client options that say where and how to connect (see kaffi.client.resolve_settings).
_SETTINGS_OPTIONS = frozenset(
    {"host", "port", "password", "tls", "timeout", "connect_timeout", "settings"}
)


def _check_client_options(options: dict[str, Any]) -> dict[str, Any]:
    """Refuse a misspelt client option now rather than at the first push."""
    if not options:
        return options
    from kaffi.client import Client

    accepted = set(inspect.signature(Client).parameters) - {"url"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigurationError(
            f"App() got an unknown client option {unknown[0]!r}; the client options are"
            f" {', '.join(sorted(accepted))}"
        )
    return options


def _check_middleware(middleware: Middleware) -> Middleware:
    if not callable(middleware):
        raise ConfigurationError(
            f"middleware must be a function taking (ctx, next), got {middleware!r}"
        )
    return middleware


def _describe(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}" if module else qualname
