"""Operator commands: ``kaffi info``, ``push``, ``queue``, ``mutate`` and ``flush``.

Each command opens one short-lived :class:`kaffi.Client` (a pool of one connection), does
its work and closes it. Errors reach the user as one ``kaffi: error: ...`` line and exit
status 1 (see :mod:`kaffi.cli.common`); commands that delete jobs ask first unless given
``--yes``.

This module only talks to a server through the public client API; it never frames
protocol bytes itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import IO, TYPE_CHECKING, Any

import click

from kaffi.cli import main
from kaffi.cli.common import connection_settings, fail, handle_errors, one_line, url_option
from kaffi.errors import KaffiError

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from kaffi.client import Client
    from kaffi.protocol.models import Info, JobPayload

__all__ = ["info", "push", "queue", "mutate", "flush"]

# -- help texts (kept as constants so they read as a whole and can be tested) -------------

INFO_HELP = """Show the server's queues, sets, version and uptime.

Prints one row per queue with its size, latency (seconds since its oldest job was
enqueued) and whether it is paused, the sizes of the scheduled, retries, dead and
working sets, and the totals. Faktory's protocol does not say which queues are paused:
kaffi's own server does, against a real Faktory the column says unknown (its web UI
shows them).
"""
INFO_JSON_HELP = (
    "Print the server's INFO document as JSON, with paused_queues added (a list, or null"
    " when the server does not say)."
)

PUSH_HELP = """Push one job of type JOBTYPE and print its jid.

Each ARG is parsed as JSON when it is valid JSON (42, true, "text", [1,2], {"a":1})
and taken as a plain string otherwise, so `kaffi push add 1 2` sends the args [1, 2]
and `kaffi push greet Ada` sends ["Ada"].

With --bulk FILE, pushes one job per line of FILE (JSON lines, `-` for stdin), each line a
whole job object such as {"jobtype":"add","args":[1,2]}, using PUSHB. Bad lines are
reported with their line numbers and the other jobs still go in; the exit status is 1
when any job was not pushed.
"""
PUSH_QUEUE_HELP = "Queue to push to (default: default)."
PUSH_AT_HELP = "Run the job at this RFC 3339 time, like 2030-01-31T12:00:00Z."
PUSH_IN_HELP = "Run the job this many seconds from now."
PUSH_RETRY_HELP = "How many times to retry on failure (0: never, -1: straight to the dead set)."
PUSH_CUSTOM_HELP = 'A JSON object stored in the job\'s "custom" field.'
PUSH_BULK_HELP = "Push the jobs in FILE, one JSON object per line (- for stdin)."

QUEUE_HELP = """Pause, resume, remove or measure queues.

`*` stands for every queue in pause, resume and remove (quote it from the shell);
Faktory refuses it for latency.
"""
QUEUE_PAUSE_HELP = "Stop handing out jobs from the queues (pushes still go in)."
QUEUE_RESUME_HELP = "Hand out jobs from paused queues again."
QUEUE_REMOVE_HELP = "Delete the queues and every job waiting in them."
QUEUE_LATENCY_HELP = "Print how many seconds the oldest job of each queue has waited."

MUTATE_HELP = """Change jobs in the retries, scheduled or dead set.

TARGET is retries, scheduled or dead. ACTION is one of:

\b
  requeue  put the matching jobs back on their queues now
  discard  delete the matching jobs
  kill     move the matching jobs to the dead set
  clear    delete every job in the set (filters do not apply)

Filters narrow discard, kill and requeue: --jobtype, --jid (repeatable; when given, the
other filters are ignored by the server) and --match, a glob over the job's JSON such as
'*uid:12345*'. Without a filter the action applies to the whole set. discard, kill and clear
ask for confirmation unless --yes is given.
"""
MUTATE_JOBTYPE_HELP = "Only jobs of this jobtype."
MUTATE_JID_HELP = "Only the job with this jid (repeat for several)."
MUTATE_MATCH_HELP = "Only jobs whose JSON matches this glob, like '*uid:12345*'."
YES_HELP = "Do not ask for confirmation."

FLUSH_HELP = """Delete every job, queue and set on the server.

Asks for confirmation unless --yes is given.
"""

#: Jobs per PUSHB when pushing a file (Faktory handles larger batches, but the progress
#: bar and the memory held at once stay reasonable with this size).
BULK_CHUNK = 1000

MUTATE_TARGETS = ("retries", "scheduled", "dead")
MUTATE_ACTIONS = ("clear", "kill", "discard", "requeue")
_DESTRUCTIVE = frozenset({"clear", "kill", "discard"})
#: The sets every Faktory INFO reports, shown first and always in this order.
STANDARD_SETS = ("scheduled", "retries", "dead", "working")


# -- shared pieces --------------------------------------------------------------------------


@contextlib.contextmanager
def _client(url: str | None) -> Iterator[Client]:
    """A one-connection client for one command; kaffi errors become one line and exit 1."""
    from kaffi.client import Client

    settings = connection_settings(url)  # a bad URL fails here with a clear message
    with handle_errors():
        client = Client(settings=settings, pool_size=1)
        try:
            yield client
        finally:
            client.close()


def _confirm(question: str, yes: bool) -> None:
    """Ask ``question``; anything but yes (including no terminal to ask on) stops the command."""
    if yes:
        return
    try:
        confirmed = click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input (no terminal): finish the prompt's line first
        click.echo("", err=True)
        confirmed = False
    if not confirmed:
        fail("not confirmed; nothing was changed (pass --yes to skip the question)")


def parse_arg(text: str) -> Any:
    """A command-line job argument: its JSON value when it is valid JSON, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def _format_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.1f}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_info(
    info: Info, latencies: dict[str, float], where: str, paused: list[str] | None = None
) -> str:
    """The readable ``kaffi info`` report; ``paused`` None means the server did not say."""
    server = info.server
    description = server.description or "Faktory"
    version = server.faktory_version or "unknown version"
    lines = [
        f"{description} {version} at {where}, up {_format_duration(server.uptime)}, "
        f"{server.connections} connection{'s' if server.connections != 1 else ''}",
        "",
    ]
    queues = info.faktory.queues
    if queues:
        rows = [
            [name, str(size), _format_latency(latencies.get(name)), _state(name, paused)]
            for name, size in sorted(queues.items())
        ]
        lines += _table(["QUEUE", "SIZE", "LATENCY", "STATE"], rows)
        if paused is None:
            lines.append("(this server does not say which queues are paused)")
    else:
        lines.append("no queues yet")
    lines.append("")
    sets = info.faktory.sets
    set_rows = [[name, str(sets.get(name, 0))] for name in STANDARD_SETS]
    set_rows += [
        [name, str(size)] for name, size in sorted(sets.items()) if name not in STANDARD_SETS
    ]
    lines += _table(["SET", "SIZE"], set_rows)
    lines.append("")
    totals = info.faktory
    lines.append(
        f"processed {totals.total_processed}, failed {totals.total_failures}, "
        f"enqueued {totals.total_enqueued}, queues {totals.total_queues}"
    )
    lines.append(
        f"worker processes {_count(totals.registered_workers)}, "
        f"jobs in progress {_count(totals.busy_jobs)}"
    )
    return "\n".join(lines)


def _state(queue: str, paused: list[str] | None) -> str:
    if paused is None:
        return "unknown"
    return "paused" if queue in paused else "running"


def paused_queues(client: Client) -> list[str] | None:
    """The paused queues, from kaffi's ``KAFFI PAUSED``; None from a server that has no
    such command (a real Faktory answers ``-ERR unknown command KAFFI``)."""
    from kaffi.errors import ServerError

    try:
        text = client.send("KAFFI", "PAUSED")
    except ServerError:
        return None
    names = json.loads(text or "null")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def _count(value: int | None) -> str:
    # A server older than Faktory 1.x's task sizes does not say: show that, not a 0.
    return "unknown" if value is None else str(value)


# -- kaffi info -----------------------------------------------------------------------------


@main.command("info", help=INFO_HELP)
@click.option("--json", "as_json", is_flag=True, help=INFO_JSON_HELP)
@url_option
def info(url: str | None, as_json: bool) -> None:
    """``kaffi info [--json]`` (help: :data:`INFO_HELP`)."""
    settings = connection_settings(url)
    with _client(url) as client:
        doc = client.info()
        paused = paused_queues(client)
        if as_json:
            click.echo(json.dumps({**doc.raw, "paused_queues": paused}, indent=2))
            return
        names = sorted(doc.faktory.queues)
        latencies = client.queue_latency(*names) if names else {}
    click.echo(render_info(doc, latencies, settings.url, paused))


# -- kaffi push -----------------------------------------------------------------------------


def _schedule(at: str | None, in_seconds: float | None) -> datetime | None:
    from kaffi.protocol.models import parse_rfc3339

    if at is not None and in_seconds is not None:
        fail("give --at or --in, not both")
    if at is not None:
        try:
            return parse_rfc3339(at)
        except ValueError as exc:
            fail(f"--at: {exc}")
    if in_seconds is not None:
        if not math.isfinite(in_seconds) or in_seconds < 0:
            fail(f"--in: must be zero or more seconds, got {in_seconds:g}")
        try:
            return datetime.now(timezone.utc) + timedelta(seconds=in_seconds)
        except OverflowError:
            fail(f"--in: {in_seconds:g} seconds is further ahead than a date can be")
    return None


def _parse_custom(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"--custom: not valid JSON: {exc}")
    if not isinstance(value, dict):
        fail(f'--custom: must be a JSON object like \'{{"key":"value"}}\', got {text!r}')
    return value


@main.command("push", help=PUSH_HELP)
@click.argument("jobtype", required=False)
@click.argument("args", nargs=-1)
@click.option("--queue", "-q", default=None, metavar="QUEUE", help=PUSH_QUEUE_HELP)
@click.option("--at", "at", default=None, metavar="RFC3339", help=PUSH_AT_HELP)
@click.option("--in", "in_seconds", type=float, default=None, metavar="SECONDS", help=PUSH_IN_HELP)
@click.option("--retry", type=int, default=None, metavar="N", help=PUSH_RETRY_HELP)
@click.option("--custom", default=None, metavar="JSON", help=PUSH_CUSTOM_HELP)
@click.option(
    "--bulk",
    type=click.File("rb"),
    default=None,
    metavar="FILE",
    help=PUSH_BULK_HELP,
)
@url_option
def push(
    jobtype: str | None,
    args: tuple[str, ...],
    queue: str | None,
    at: str | None,
    in_seconds: float | None,
    retry: int | None,
    custom: str | None,
    bulk: IO[bytes] | None,
    url: str | None,
) -> None:
    """``kaffi push JOBTYPE [ARG...]`` or ``kaffi push --bulk FILE`` (help: :data:`PUSH_HELP`)."""
    if bulk is not None:
        if (
            jobtype is not None
            or queue
            or at
            or in_seconds is not None
            or retry is not None
            or custom
        ):
            fail("--bulk takes every job from FILE: give no JOBTYPE, ARG or job options with it")
        _push_bulk(bulk, url)
        return
    if jobtype is None:
        fail("missing JOBTYPE (or --bulk FILE); see kaffi push --help")
    from kaffi.protocol.models import JobPayload

    fields: dict[str, Any] = {"jobtype": jobtype, "args": [parse_arg(a) for a in args]}
    if queue is not None:
        fields["queue"] = queue
    when = _schedule(at, in_seconds)
    if when is not None:
        fields["at"] = when
    if retry is not None:
        fields["retry"] = retry
    extra = _parse_custom(custom)
    if extra is not None:
        fields["custom"] = extra
    with handle_errors():
        payload = JobPayload.create(**fields)
    with _client(url) as client:
        jid = client.push(payload)
    click.echo(jid)


def _read_bulk_lines(
    stream: IO[bytes], problems: list[str]
) -> Iterator[tuple[list[tuple[int, JobPayload]], int]]:
    """Yield the valid jobs in chunks of BULK_CHUNK, each job with its line number, and the
    bytes read so far (for the progress bar). Bad lines are recorded in ``problems``."""
    from kaffi.protocol.models import JobPayload

    chunk: list[tuple[int, JobPayload]] = []
    consumed = 0
    for number, raw in enumerate(stream, start=1):
        consumed += len(raw)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            problems.append(f"line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not text:
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            problems.append(f"line {number}: not valid JSON: {exc}")
            continue
        if not isinstance(doc, dict):
            problems.append(f"line {number}: expected a JSON object (one job), got {text[:60]}")
            continue
        try:
            chunk.append((number, JobPayload.create(**doc)))
        except KaffiError as exc:
            problems.append(f"line {number}: {one_line(str(exc))}")
            continue
        except TypeError as exc:  # a key such as "cls" that collides with a parameter name
            problems.append(f"line {number}: {exc}")
            continue
        if len(chunk) >= BULK_CHUNK:
            yield chunk, consumed
            chunk = []
    if chunk:
        yield chunk, consumed


def _stream_size(stream: IO[bytes]) -> int | None:
    """Bytes in a regular file (for the progress bar), None for pipes and terminals."""
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat as stat_module

    return stat.st_size if stat_module.S_ISREG(stat.st_mode) else None


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _push_bulk(stream: IO[bytes], url: str | None) -> None:
    problems: list[str] = []
    pushed = 0
    size = _stream_size(stream)
    show_bar = size is not None and _stderr_is_terminal()
    with _client(url) as client, contextlib.ExitStack() as stack:
        bar: ProgressBar[int] | None = (
            stack.enter_context(click.progressbar(length=size, label="pushing", file=sys.stderr))
            if show_bar
            else None
        )
        for chunk, consumed in _read_bulk_lines(stream, problems):
            line_of = {payload.jid: number for number, payload in chunk}
            rejected = client.push_bulk([payload for _, payload in chunk])
            for job in rejected:
                where = f"line {line_of[job.jid]}" if job.jid in line_of else "a job"
                problems.append(f"{where} (jid {job.jid}): server refused it: {job.reason}")
            pushed += len(chunk) - sum(1 for job in rejected if job.jid in line_of)
            if bar is not None:
                bar.update(consumed - bar.pos)
    for problem in problems:
        click.echo(f"kaffi: {problem}", err=True)
    click.echo(f"pushed {pushed} job{'s' if pushed != 1 else ''}")
    if problems:
        fail(f"{len(problems)} line{'s' if len(problems) != 1 else ''} not pushed (see above)")


# -- kaffi queue ----------------------------------------------------------------------------


@main.group("queue", help=QUEUE_HELP)
def queue() -> None:
    """The ``kaffi queue`` command family."""


_names_argument = click.argument("names", nargs=-1, required=True, metavar="NAME...")


def _change_queues(verb: str, past: str, names: tuple[str, ...], url: str | None) -> None:
    """``client.queue_<verb>(*names)``, then say it was done (``past``: the verb's past)."""
    with _client(url) as client:
        getattr(client, f"queue_{verb}")(*names)
    click.echo(f"{past} {', '.join(names)}")


def _queue_change_command(verb: str, past: str, help_text: str) -> click.Command:
    """``kaffi queue <verb> NAME...``: pause and resume differ only in their words."""

    @queue.command(verb, help=help_text)
    @_names_argument
    @url_option
    def command(names: tuple[str, ...], url: str | None) -> None:
        _change_queues(verb, past, names, url)

    command.__doc__ = f"``kaffi queue {verb} NAME...``."
    return command


queue_pause = _queue_change_command("pause", "paused", QUEUE_PAUSE_HELP)
queue_resume = _queue_change_command("resume", "resumed", QUEUE_RESUME_HELP)


@queue.command("remove", help=QUEUE_REMOVE_HELP)
@_names_argument
@click.option("--yes", "-y", is_flag=True, help=YES_HELP)
@url_option
def queue_remove(names: tuple[str, ...], yes: bool, url: str | None) -> None:
    """``kaffi queue remove NAME... [--yes]``."""
    what = (
        "every queue"
        if "*" in names
        else f"queue{'s' if len(names) > 1 else ''} " + ", ".join(names)
    )
    _confirm(f"Remove {what} and every job waiting in it?", yes)
    _change_queues("remove", "removed", names, url)


@queue.command("latency", help=QUEUE_LATENCY_HELP)
@_names_argument
@url_option
def queue_latency(names: tuple[str, ...], url: str | None) -> None:
    """``kaffi queue latency NAME...``."""
    if "*" in names:
        fail("latency needs queue names: Faktory does not support '*' for QUEUE LATENCY")
    with _client(url) as client:
        latencies = client.queue_latency(*names)
    rows = [[name, _format_latency(latencies.get(name))] for name in names]
    click.echo("\n".join(_table(["QUEUE", "LATENCY"], rows)))


# -- kaffi mutate ---------------------------------------------------------------------------


def _scope(action: str, jobtype: str | None, jids: Sequence[str], match: str | None) -> str:
    """Which jobs a mutation touches, in words: "every job", "the jobs of type 'x'"..."""
    if action == "clear":
        return "every job"
    if jids:
        return f"the job{'s' if len(jids) > 1 else ''} with jid {', '.join(jids)}"
    parts = []
    if jobtype is not None:
        parts.append(f"of type {jobtype!r}")
    if match is not None:
        parts.append(f"matching {match!r}")
    return "the jobs " + " ".join(parts) if parts else "every job"


_CONFIRM_VERB = {"clear": "Delete", "discard": "Delete", "kill": "Move to the dead set"}
_DONE = {"clear": "cleared", "kill": "killed", "discard": "discarded", "requeue": "requeued"}


@main.command("mutate", help=MUTATE_HELP)
@click.argument("target", type=click.Choice(MUTATE_TARGETS))
@click.argument("action", type=click.Choice(MUTATE_ACTIONS))
@click.option("--jobtype", default=None, metavar="T", help=MUTATE_JOBTYPE_HELP)
@click.option("--jid", "jids", multiple=True, metavar="J", help=MUTATE_JID_HELP)
@click.option("--match", default=None, metavar="GLOB", help=MUTATE_MATCH_HELP)
@click.option("--yes", "-y", is_flag=True, help=YES_HELP)
@url_option
def mutate(
    target: str,
    action: str,
    jobtype: str | None,
    jids: tuple[str, ...],
    match: str | None,
    yes: bool,
    url: str | None,
) -> None:
    """``kaffi mutate TARGET ACTION [filters] [--yes]`` (help: :data:`MUTATE_HELP`)."""
    filtered = jobtype is not None or bool(jids) or match is not None
    if action == "clear" and filtered:
        fail(
            "clear empties the whole set and ignores filters; use discard to delete only "
            "the matching jobs"
        )
    scope = _scope(action, jobtype, jids, match)
    if action in _DESTRUCTIVE:
        _confirm(f"{_CONFIRM_VERB[action]} {scope} in the {target} set?", yes)
    # MUTATE answers a bare +OK, never a count: the set sizes from INFO before and after
    # are what there is to show (other clients may change them in between).
    watched = [target] + (["dead"] if action == "kill" and target != "dead" else [])
    with _client(url) as client:
        before = client.info().faktory.sets
        mutation = getattr(client, target)
        if jobtype is not None:
            mutation = mutation.of_type(jobtype)
        if jids:
            mutation = mutation.with_jids(*jids)
        if match is not None:
            mutation = mutation.matching(match)
        getattr(mutation, action)()
        after = client.info().faktory.sets
    change = ", ".join(f"{s} {before.get(s, 0)} -> {after.get(s, 0)}" for s in watched)
    click.echo(f"{_DONE[action]} {scope} in the {target} set ({change})")


# -- kaffi flush ----------------------------------------------------------------------------


@main.command("flush", help=FLUSH_HELP)
@click.option("--yes", "-y", is_flag=True, help=YES_HELP)
@url_option
def flush(yes: bool, url: str | None) -> None:
    """``kaffi flush [--yes]``."""
    settings = connection_settings(url)
    _confirm(f"Delete every job, queue and set on the server at {settings.url}?", yes)
    with _client(url) as client:
        client.flush()
    click.echo("flushed")
