"""``kaffi info / push / queue / mutate / flush`` through click's CliRunner, against a live
server (the embedded one from the ``faktory_server`` fixture, or KAFFI_TEST_URL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kaffi.cli import main, ops
from kaffi.client import Client
from kaffi.protocol.models import JobPayload
from tests.support import closed_port_url, embedded_server

Invoke = Callable[..., Result]


@pytest.fixture
def server_url(faktory_server: Any) -> str:
    url = faktory_server.url
    assert isinstance(url, str)
    return url


@pytest.fixture
def client(kaffi_client: Client) -> Client:
    kaffi_client.flush()
    return kaffi_client


@pytest.fixture
def invoke(server_url: str, client: Client) -> Invoke:
    """Run ``kaffi ARGS... --url <the test server>``; the client fixture flushes it first."""

    def run(*args: str, input: str | None = None, url: str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(main, [*args, "--url", url or server_url], input=input)

    return run


def sizes(client: Client) -> tuple[dict[str, int], dict[str, int]]:
    info = client.info()
    return dict(info.faktory.queues), dict(info.faktory.sets)


def assert_one_line_error(result: Result) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kaffi: error: ")
    assert "Traceback" not in result.output


def make_dead_job(client: Client, jobtype: str = "broken", retry: int = -1) -> str:
    """Push a job, fetch it and FAIL it: retry -1 sends it to the dead set, >0 to retries."""
    jid = client.push(JobPayload.create(jobtype=jobtype, args=[1], queue="mut", retry=retry))
    fetched = client.fetch("mut")
    assert fetched is not None
    assert fetched.jid == jid
    client.fail(jid, errtype="RuntimeError", message="boom", backtrace=[])
    return jid


# -- info ---------------------------------------------------------------------------------


def test_info_shows_queues_sets_and_version(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="critical"))
    client.push(JobPayload.create(jobtype="a", args=[], queue="critical"))
    client.push(JobPayload.create(jobtype="a", args=[], queue="default"))
    result = invoke("info")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f" at {client.settings.url}, up " in lines[0]
    critical = next(line for line in lines if line.startswith("critical"))
    assert critical.split()[1] == "2"
    assert critical.split()[2].endswith("s")
    default = next(line for line in lines if line.startswith("default"))
    assert default.split()[1] == "1"
    for name in ("scheduled", "retries", "dead", "working"):
        row = next(line for line in lines if line.startswith(name))
        assert row.split()[1] == "0"


def test_info_shows_which_queues_are_paused(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="held"))
    client.push(JobPayload.create(jobtype="a", args=[], queue="flowing"))
    client.queue_pause("held")
    result = invoke("info")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert rows["held"][0] == "1"
    assert rows["held"][-1] == "paused"
    assert rows["flowing"][-1] == "running"
    doc = json.loads(invoke("info", "--json").stdout)
    assert doc["paused_queues"] == ["held"]
    assert doc["faktory"]["queues"]["held"] == 1
    client.queue_resume("held")
    assert json.loads(invoke("info", "--json").stdout)["paused_queues"] == []


def test_info_json_is_the_servers_document(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="q1"))
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["faktory"]["queues"]["q1"] == 1
    assert set(doc["faktory"]["sets"]) >= {"scheduled", "retries", "dead", "working"}
    assert "faktory_version" in doc["server"]


def test_render_info_formats_uptime_and_missing_latency() -> None:
    from kaffi.protocol.models import Info

    info = Info.from_raw(
        {
            "faktory": {"queues": {"b": 3, "a": 0}, "sets": {"dead": 2}},
            "server": {"description": "Faktory", "faktory_version": "1.10.0", "uptime": 3723},
        }
    )
    text = ops.render_info(info, {"b": 1.5}, "localhost:7419")
    assert text.splitlines()[0] == "Faktory 1.10.0 at localhost:7419, up 1h 2m 3s, 0 connections"
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["a"] == ["0", "-", "unknown"]
    assert rows["b"] == ["3", "1.500s", "unknown"]
    assert "(this server does not say which queues are paused)" in text.splitlines()
    assert rows["dead"] == ["2"]
    assert rows["retries"] == ["0"]
    # An INFO without Faktory's task sizes says so instead of showing zeros.
    assert text.splitlines()[-1] == "worker processes unknown, jobs in progress unknown"


def test_info_shows_worker_processes_and_jobs_in_progress(invoke: Invoke, client: Client) -> None:
    """The sizes of INFO's ``tasks`` block (issue 20) reach ``Info`` and ``kaffi info``."""
    from kaffi.client import Connection
    from kaffi.protocol.commands import encode_fetch

    # Workers of earlier tests may still be registered (FLUSH keeps them): count from here.
    before = client.info().faktory.registered_workers
    assert before is not None
    client.push(JobPayload.create(jobtype="a", args=[], queue="tasks-q"))
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    client.push(JobPayload.create(jobtype="a", args=[], queue="tasks-q", at=future))
    worker = Connection.open(client.settings, wid="wid-tasks-0001")
    try:
        assert worker.request(encode_fetch("tasks-q")) is not None
        doc = client.info()
        assert doc.faktory.registered_workers == before + 1
        assert doc.faktory.busy_jobs == 1
        assert doc.faktory.task_size("Scheduled") == 1
        assert doc.faktory.tasks["Retries"].size == 0
        result = invoke("info")
        assert result.exit_code == 0, result.output
        expected = f"worker processes {before + 1}, jobs in progress 1"
        assert result.stdout.splitlines()[-1] == expected
    finally:
        worker.close()


# -- push ---------------------------------------------------------------------------------


def test_parse_arg_takes_json_or_falls_back_to_text() -> None:
    assert ops.parse_arg("42") == 42
    assert ops.parse_arg("true") is True
    assert ops.parse_arg('"quoted"') == "quoted"
    assert ops.parse_arg("[1, 2]") == [1, 2]
    assert ops.parse_arg('{"a": 1}') == {"a": 1}
    assert ops.parse_arg("Ada") == "Ada"
    assert ops.parse_arg("{not json") == "{not json"


def test_push_parses_args_and_prints_the_jid(invoke: Invoke, client: Client) -> None:
    result = invoke("push", "add", "1", "2.5", "Ada", '{"k":[true,null]}', '"7"')
    assert result.exit_code == 0, result.output
    jid = result.stdout.strip()
    job = client.fetch("default")
    assert job is not None
    assert job.jid == jid
    assert job.jobtype == "add"
    assert job.args == [1, 2.5, "Ada", {"k": [True, None]}, "7"]


def test_push_options_reach_the_job(invoke: Invoke, client: Client) -> None:
    result = invoke(
        "push", "report", "--queue", "reports", "--retry", "3", "--custom", '{"trace":"t-1"}'
    )
    assert result.exit_code == 0, result.output
    job = client.fetch("reports")
    assert job is not None
    assert job.jid == result.stdout.strip()
    assert job.retry == 3
    assert job.custom == {"trace": "t-1"}


@pytest.mark.parametrize("when", ["in", "at"])
def test_push_in_the_future_goes_to_the_scheduled_set(
    invoke: Invoke, client: Client, when: str
) -> None:
    if when == "in":
        result = invoke("push", "later", "--in", "3600")
    else:
        at = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        result = invoke("push", "later", "--at", at)
    assert result.exit_code == 0, result.output
    queues, sets = sizes(client)
    assert sets["scheduled"] == 1
    assert queues.get("default", 0) == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["push", "x", "--at", "tomorrow"], "--at"),
        (["push", "x", "--at", "2030-01-01T00:00:00Z", "--in", "5"], "--at or --in"),
        (["push", "x", "--in", "-1"], "--in"),
        (["push", "x", "--in", "inf"], "--in"),
        (["push", "x", "--in", "1e300"], "--in"),
        (["push", "x", "--custom", "[1]"], "--custom"),
        (["push", "x", "--custom", "{oops"], "--custom"),
        (["push", "x", "--queue", "no spaces"], "queue"),
        (["push", "x", "--retry", "-5"], "retry"),
        (["push"], "JOBTYPE"),
    ],
)
def test_push_refuses_bad_input_in_one_line(
    invoke: Invoke, client: Client, args: list[str], needle: str
) -> None:
    result = invoke(*args)
    assert_one_line_error(result)
    assert needle in result.stderr
    queues, sets = sizes(client)
    assert sum(queues.values()) == 0
    assert sets["scheduled"] == 0


def test_push_bulk_reports_bad_lines_and_pushes_the_rest(
    invoke: Invoke, client: Client, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"jobtype": "a", "args": [1], "queue": "bulk"}),
        "{broken json",
        "",
        json.dumps({"jobtype": "a", "args": [2], "queue": "bulk"}),
        json.dumps([1, 2]),
        json.dumps({"jobtype": "a", "args": [3], "queue": "bad queue"}),
        json.dumps({"jobtype": "a", "args": [4], "queue": "bulk", "jid": "short"}),
        json.dumps({"jobtype": "a", "args": [5], "queue": "bulk"}),
    ]
    path = tmp_path / "jobs.jsonl"
    data = ("\n".join(lines) + "\n").encode() + b'{"jobtype":"\xff"}\n'
    data += json.dumps({"jobtype": "a", "args": [6], "queue": "bulk"}).encode() + b"\n"
    path.write_bytes(data)
    result = invoke("push", "--bulk", str(path))
    assert result.exit_code == 1, result.output
    assert "pushed 4 jobs" in result.stdout
    for number in (2, 5, 6, 7, 9):
        assert f"line {number}:" in result.stderr
    for number in (1, 3, 4, 8, 10):
        assert f"line {number}:" not in result.stderr
    assert "line 9: not valid UTF-8" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("kaffi: error: 5 lines not pushed")
    queues, _ = sizes(client)
    assert queues["bulk"] == 4


def test_push_bulk_from_stdin(invoke: Invoke, client: Client) -> None:
    body = "".join(
        json.dumps({"jobtype": "b", "args": [i], "queue": "stdin"}) + "\n" for i in range(2500)
    )
    result = invoke("push", "--bulk", "-", input=body)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "pushed 2500 jobs"
    assert result.stderr == ""
    queues, _ = sizes(client)
    assert queues["stdin"] == 2500


def test_push_bulk_refuses_job_options(invoke: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("", encoding="utf-8")
    result = invoke("push", "--bulk", str(path), "--queue", "x")
    assert_one_line_error(result)


# -- queue --------------------------------------------------------------------------------


def test_queue_pause_and_resume(invoke: Invoke, client: Client) -> None:
    jid = client.push(JobPayload.create(jobtype="a", args=[], queue="paused"))
    result = invoke("queue", "pause", "paused")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "paused paused"
    assert client.fetch("paused") is None  # the server skips a paused queue
    result = invoke("queue", "resume", "*")
    assert result.exit_code == 0, result.output
    job = client.fetch("paused")
    assert job is not None
    assert job.jid == jid


def test_queue_pause_wildcard_pauses_every_queue(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="one"))
    client.push(JobPayload.create(jobtype="a", args=[], queue="two"))
    result = invoke("queue", "pause", "*")
    assert result.exit_code == 0, result.output
    assert client.fetch("one", "two") is None  # both paused
    assert invoke("queue", "resume", "one").exit_code == 0
    job = client.fetch("one", "two")
    assert job is not None
    assert job.queue == "one"
    assert invoke("queue", "resume", "*").exit_code == 0


def test_queue_remove_asks_first(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="gone"))
    client.push(JobPayload.create(jobtype="a", args=[], queue="kept"))
    refused = invoke("queue", "remove", "gone", input="n\n")
    assert refused.exit_code == 1
    assert "nothing was changed" in refused.stderr
    assert "gone" in sizes(client)[0]
    result = invoke("queue", "remove", "gone", "--yes")
    assert result.exit_code == 0, result.output
    queues, _ = sizes(client)
    assert "gone" not in queues
    assert queues["kept"] == 1


def test_queue_latency(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="slow"))
    result = invoke("queue", "latency", "slow", "empty")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"slow", "empty"}
    assert rows["slow"].endswith("s")
    assert float(rows["slow"].rstrip("s")) >= 0


def test_queue_latency_refuses_the_wildcard(invoke: Invoke) -> None:
    assert_one_line_error(invoke("queue", "latency", "*"))


def test_queue_needs_a_name(invoke: Invoke) -> None:
    result = invoke("queue", "pause")
    assert result.exit_code == 2  # click's usage error


# -- mutate -------------------------------------------------------------------------------


def test_mutate_requeue_by_jid(invoke: Invoke, client: Client) -> None:
    jid = make_dead_job(client)
    make_dead_job(client)
    assert sizes(client)[1]["dead"] == 2
    result = invoke("mutate", "dead", "requeue", "--jid", jid)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"requeued the job with jid {jid} in the dead set (dead 2 -> 1)"
    queues, sets = sizes(client)
    assert sets["dead"] == 1
    assert queues["mut"] == 1
    job = client.fetch("mut")
    assert job is not None
    assert job.jid == jid


def test_mutate_discard_by_jobtype_asks_first(invoke: Invoke, client: Client) -> None:
    make_dead_job(client, jobtype="drop_me")
    make_dead_job(client, jobtype="keep_me")
    refused = invoke("mutate", "dead", "discard", "--jobtype", "drop_me", input="n\n")
    assert refused.exit_code == 1
    assert "of type 'drop_me'" in refused.stderr
    assert sizes(client)[1]["dead"] == 2
    result = invoke("mutate", "dead", "discard", "--jobtype", "drop_me", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "discarded the jobs of type 'drop_me' in the dead set (dead 2 -> 1)"
    )
    assert sizes(client)[1]["dead"] == 1


def test_mutate_kill_by_match_moves_retries_to_dead(invoke: Invoke, client: Client) -> None:
    make_dead_job(client, jobtype="needle_job", retry=5)
    make_dead_job(client, jobtype="other", retry=5)
    assert sizes(client)[1]["retries"] == 2
    result = invoke("mutate", "retries", "kill", "--match", "*needle*", input="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("in the retries set (retries 2 -> 1, dead 0 -> 1)")
    _, sets = sizes(client)
    assert sets["retries"] == 1
    assert sets["dead"] == 1


def test_mutate_clear_empties_the_set_and_refuses_filters(invoke: Invoke, client: Client) -> None:
    make_dead_job(client)
    make_dead_job(client)
    assert_one_line_error(invoke("mutate", "dead", "clear", "--jobtype", "x", "--yes"))
    assert sizes(client)[1]["dead"] == 2
    result = invoke("mutate", "dead", "clear", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "cleared every job in the dead set (dead 2 -> 0)"
    assert sizes(client)[1]["dead"] == 0


def test_mutate_refuses_unknown_target(invoke: Invoke) -> None:
    result = invoke("mutate", "queues", "clear", "--yes")
    assert result.exit_code == 2
    assert "retries" in result.stderr


# -- flush --------------------------------------------------------------------------------


def test_flush_asks_first_then_deletes_everything(invoke: Invoke, client: Client) -> None:
    client.push(JobPayload.create(jobtype="a", args=[], queue="f"))
    make_dead_job(client)
    refused = invoke("flush", input="\n")
    assert refused.exit_code == 1
    assert sizes(client)[0]["f"] == 1
    result = invoke("flush", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "flushed"
    queues, sets = sizes(client)
    assert sum(queues.values()) == 0
    assert sets["dead"] == 0


# -- errors and --url ---------------------------------------------------------------------

EVERY_COMMAND = [
    ["info"],
    ["info", "--json"],
    ["push", "x", "1"],
    ["queue", "pause", "q"],
    ["queue", "resume", "q"],
    ["queue", "remove", "q", "--yes"],
    ["queue", "latency", "q"],
    ["mutate", "dead", "requeue"],
    ["mutate", "retries", "discard", "--yes"],
    ["flush", "--yes"],
]


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=lambda a: " ".join(a))
def test_unreachable_server_is_one_line(args: list[str]) -> None:
    url = closed_port_url()
    result = CliRunner().invoke(main, [*args, "--url", url])
    assert_one_line_error(result)
    assert "127.0.0.1" in result.stderr


@pytest.mark.parametrize("args", [["info"], ["push", "x"], ["flush", "--yes"]])
def test_bad_url_is_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--url", "http://example.invalid:80"])
    assert_one_line_error(result)


def test_url_defaults_to_faktory_url(server_url: str, client: Client) -> None:
    result = CliRunner().invoke(
        main, ["push", "env_job"], env={"FAKTORY_URL": server_url, "FAKTORY_PROVIDER": None}
    )
    assert result.exit_code == 0, result.output
    job = client.fetch("default")
    assert job is not None
    assert job.jobtype == "env_job"


def test_url_follows_faktory_provider(server_url: str, client: Client) -> None:
    env = {"FAKTORY_PROVIDER": "MY_FAKTORY", "MY_FAKTORY": server_url, "FAKTORY_URL": None}
    result = CliRunner().invoke(main, ["push", "provided"], env=env)
    assert result.exit_code == 0, result.output
    job = client.fetch("default")
    assert job is not None
    assert job.jobtype == "provided"


def test_help_texts_are_the_constants() -> None:
    runner = CliRunner()
    for args, first_line in [
        (["push", "--help"], ops.PUSH_HELP.splitlines()[0]),
        (["info", "--help"], ops.INFO_HELP.splitlines()[0]),
        (["mutate", "--help"], ops.MUTATE_HELP.splitlines()[0]),
        (["queue", "pause", "--help"], ops.QUEUE_PAUSE_HELP),
        (["flush", "--help"], ops.FLUSH_HELP.splitlines()[0]),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert first_line in result.stdout
        assert "--url" in result.stdout


@pytest.mark.parametrize("args", [["info"], ["push", "x"], ["queue", "pause", "q"]])
def test_wrong_password_is_one_line(args: list[str]) -> None:

    with embedded_server(password="s3cret") as server:
        wrong = f"tcp://:not-it@127.0.0.1:{server.port}"
        result = CliRunner().invoke(main, [*args, "--url", wrong])
        assert_one_line_error(result)
        assert "password" in result.stderr
        assert "not-it" not in result.stderr
        right = CliRunner().invoke(main, [*args, "--url", server.url])
        assert right.exit_code == 0, right.output


def test_push_bulk_reports_jobs_the_server_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from collections.abc import Iterator, Sequence
    from contextlib import contextmanager

    from kaffi.protocol.models import RejectedJob

    class RefusingClient:
        """Stands in for a server that refuses every job of type 'nope' in a PUSHB."""

        def push_bulk(self, jobs: Sequence[JobPayload]) -> list[RejectedJob]:
            return [
                RejectedJob(jid=job.jid, reason="jobs must be nicer", payload=job.to_wire())
                for job in jobs
                if job.jobtype == "nope"
            ]

    @contextmanager
    def fake_client(url: str | None) -> Iterator[RefusingClient]:
        yield RefusingClient()

    monkeypatch.setattr(ops, "_client", fake_client)
    path = tmp_path / "jobs.jsonl"
    jobs = [{"jobtype": "ok", "args": []}, {"jobtype": "nope", "args": []}, {"jobtype": "ok"}]
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs), encoding="utf-8")
    result = CliRunner().invoke(main, ["push", "--bulk", str(path)])
    assert result.exit_code == 1
    assert result.stdout.strip() == "pushed 2 jobs"
    assert "line 2 (jid " in result.stderr
    assert "server refused it: jobs must be nicer" in result.stderr


def test_push_bulk_shows_progress_only_on_a_terminal(
    invoke: Invoke, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"jobtype": "a", "args": [], "queue": "bar"}) + "\n", "utf-8")
    quiet = invoke("push", "--bulk", str(path))
    assert quiet.exit_code == 0, quiet.output
    assert "pushing" not in quiet.stderr
    monkeypatch.setattr(ops, "_stderr_is_terminal", lambda: True)
    shown = invoke("push", "--bulk", str(path))
    assert shown.exit_code == 0, shown.output
    assert "pushing" in shown.stderr
    assert shown.stdout.strip() == "pushed 1 job"
    assert sizes(client)[0]["bar"] == 2
