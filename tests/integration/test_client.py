"""The Python client against a real orchestrator: every method, the server's exceptions, retries that never run a
task twice, event streams that survive a dropped connection; and the CLI built on it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.client import AsyncClient, Client, Retries, TaskEvent
from orchestrator.errors import (
    InputNotExpectedError,
    InvalidParamsError,
    QueueFullError,
    RpcError,
    SagaNotFoundError,
    ScheduleNotFoundError,
    TaskNotCancellableError,
    TaskNotFoundError,
)
from orchestrator.models import RunTaskResult, TaskRecord, TaskStatus
from tests.conftest import Deployed, deployed, make_settings
from tests.redis_view import client as redis_client
from tests.redis_view import task_keys
from tests.support import RedisServer, free_port, wait_until

pytestmark = pytest.mark.integration

ACTIVE_LIMIT = 3
TWO_STEPS = {"name": "two", "steps": [
    {"name": "first", "tool": "echo", "input": {"prompt": "first"}},
    {"name": "second", "tool": "echo", "input": {"prompt": "second", "delay_ms": 5000, "steps": 5}},
]}


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int) -> Iterator[Deployed]:
    settings = make_settings(
        redis_server.url,
        pools={"reasoning": {"workers": 1, "slots": 4}, "codegen": {"workers": 0}},
        limits={"max_active_tasks": ACTIVE_LIMIT, "queue_full_retry_after_s": 0.2},
        tools={"broken": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m",
                          "timeout_s": 5}},
        providers={"broken": {"max_retries": 0}},
        workflows={"two": TWO_STEPS},
    )
    with deployed(settings, ray_session) as running:
        yield running


class SpoilingProxy:
    """A TCP proxy on 127.0.0.1 in front of the orchestrator that spoils its first connection as a network can:
    by default the request arrives but its answer is lost; with `cut`, the answer passes up to and including
    `cut`, then the connection breaks. Later connections pass untouched. `requests` holds what each one sent."""

    def __init__(self, upstream_port: int, cut: bytes | None = None) -> None:
        self.requests: list[bytes] = []
        self._upstream, self._cut = upstream_port, cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> SpoilingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        _close(self._listener)
        self._thread.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            index = len(self.requests)
            self.requests.append(b"")
            threading.Thread(target=self._forward, args=(downstream, upstream, index), daemon=True).start()
            threading.Thread(target=self._answer, args=(upstream, downstream, index == 0), daemon=True).start()

    def _forward(self, downstream: socket.socket, upstream: socket.socket, index: int) -> None:
        while chunk := _recv(downstream):
            self.requests[index] += chunk
            try:
                upstream.sendall(chunk)
            except OSError:  # the other direction closed it
                return

    def _answer(self, upstream: socket.socket, downstream: socket.socket, spoil: bool) -> None:
        seen = b""
        try:
            while chunk := _recv(upstream):
                if spoil and self._cut is None:
                    return  # the answer came, and is lost
                seen += chunk
                if spoil and self._cut is not None and (at := seen.find(self._cut)) >= 0:
                    downstream.sendall(chunk[:at + len(self._cut) - (len(seen) - len(chunk))])
                    return
                downstream.sendall(chunk)
        except OSError:  # the client went away
            return
        finally:
            for sock in (downstream, upstream):
                _close(sock)


def _close(sock: socket.socket) -> None:
    """Close at once: shutdown wakes a thread blocked on the socket and sends the FIN a plain close would hold
    back while that thread still uses it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def via(proxy: SpoilingProxy, system: Deployed) -> str:
    return f"http://127.0.0.1:{proxy.port}/{system.name}"


def serve_port(system: Deployed) -> int:
    return int(system.base_url.split(":")[2].split("/")[0])


def body_of(request: bytes) -> dict[str, Any]:
    return json.loads(request.partition(b"\r\n\r\n")[2])


def task_count(system: Deployed) -> int:
    conn = redis_client(system.settings)
    try:
        return task_keys(conn, system.settings)
    finally:
        conn.close()


def cancel_all(client: Client, task_ids: list[str]) -> None:
    """Cancel what is still unfinished, and wait until it is: the next test starts on an idle system."""
    for task_id in task_ids:
        with contextlib.suppress(TaskNotCancellableError):  # finished already
            client.cancel_task(task_id)
    for task_id in task_ids:
        client.wait(task_id, 30)


# ---------------------------------------------------------------- methods


def test_task_methods(system: Deployed) -> None:
    with Client(system.base_url) as client:
        record = client.run_task("echo", "hi", wait=30)
        assert isinstance(record, TaskRecord) and record.status is TaskStatus.SUCCEEDED
        assert record.result == {"text": "hi", "steps": 1}
        assert record.idempotency_key is not None and record.idempotency_key.startswith("client-")
        accepted = client.run_task("echo", input={"prompt": "v2", "delay_ms": 300, "steps": 2})
        assert isinstance(accepted, RunTaskResult) and accepted.status is TaskStatus.QUEUED
        finished = client.wait(accepted.task_id, timeout_s=30)
        assert finished.result == {"text": "v2", "steps": 2} and client.get_task(accepted.task_id) == finished
        again = client.run_task("echo", input={"prompt": "other"}, idempotency_key=finished.idempotency_key)
        assert isinstance(again, RunTaskResult) and again.duplicate and again.task_id == finished.task_id

        batch = client.run_tasks([{"tool": "echo", "input": {"prompt": "b1"}},
                                  {"tool": "echo", "input": {"prompt": "b2"}, "wait": 30},
                                  {"tool": "echo", "input": {"prompt": "b3"}, "priority": 11}])
        assert isinstance(batch[0], RunTaskResult) and isinstance(batch[1], TaskRecord)
        assert batch[1].result == {"text": "b2", "steps": 1} and client.wait(batch[0].task_id, 30).result["text"] == "b1"
        assert isinstance(batch[2], InvalidParamsError) and list(batch[2].fields) == ["params.priority"]

        long = client.run_task("echo", "long", context={"delay_ms": 20_000, "steps": 20})
        with pytest.raises(TimeoutError, match=f"task {long.task_id} is still (queued|running) after 0.3 s"):
            client.wait(long.task_id, timeout_s=0.3)
        with pytest.raises(InvalidParamsError) as running:  # only a finished task is re-run
            client.rerun_task(long.task_id)
        assert "only a finished task can be re-run" in running.value.fields["params.task_id"]
        assert client.cancel_task(long.task_id).task_id == long.task_id
        assert client.wait(long.task_id, timeout_s=30).status is TaskStatus.CANCELLED

        redo = client.rerun_task(finished.task_id, {"prompt": "v2 again"}, idempotency_key="redo-once")
        assert client.rerun_task(finished.task_id, idempotency_key="redo-once").task_id == redo.task_id  # a retry
        rerun = client.wait(redo.task_id, 30)
        assert rerun.result == {"text": "v2 again", "steps": 1} and rerun.rerun_of == finished.task_id
        assert client.get_task(finished.task_id).reruns == [redo.task_id]  # linked once
        short = client.wait(client.rerun_task(long.task_id, {"prompt": "short"}, priority=3).task_id, 30)
        assert (short.result, short.priority, short.rerun_of) == ({"text": "short", "steps": 1}, 3, long.task_id)


def test_saga_and_operator_methods(system: Deployed) -> None:
    with Client(system.base_url) as client:
        assert "two" in {w.name for w in client.list_workflows()}
        started = client.run_saga("two", {}, idempotency_key="saga-once")
        assert client.run_saga("two", {}, idempotency_key="saga-once").saga_id == started.saga_id
        saga = client.get_saga(started.saga_id)
        assert saga.saga_id == started.saga_id and saga.workflow == "two"
        assert client.cancel_saga(started.saga_id).cancel_requested
        wait_until(lambda: client.get_saga(started.saga_id).status.finished, 30, "the saga to settle")
        again = client.rerun_saga(started.saga_id)  # cancelled: taken up where it stopped
        assert client.get_saga(again.saga_id).rerun_of == started.saga_id
        assert client.get_saga(started.saga_id).reruns == [again.saga_id]
        wait_until(lambda: client.get_saga(again.saga_id).status.finished, 30, "the rerun to settle")

        made = client.create_schedule("echo", {"prompt": "tick"}, interval_s=1, name="heartbeat")
        wait_until(lambda: client.get_schedule(made.schedule_id).fired >= 1, 30, "a fire")
        assert client.pause_schedule(made.schedule_id).paused
        assert [s.spec.name for s in client.list_schedules()] == ["heartbeat"]
        for run in client.get_schedule(made.schedule_id).runs:  # (the next tests count active tasks)
            assert client.wait(run.task_id, 30).result == {"text": "tick", "steps": 1}
        assert client.delete_schedule(made.schedule_id).deleted
        with pytest.raises(ScheduleNotFoundError):
            client.resume_schedule(made.schedule_id)

        status = client.status()
        assert "reasoning" in {p.worker_type for p in status.pools} and "echo" in {t.name for t in status.tools}
        assert client.analytics(window_s=60).window_s == 60
        assert "run_task" in {m["name"] for m in client.discover()["methods"]}
        injected = client.inject("add", task={"tool": "echo", "input": {"prompt": "by hand"}})
        assert client.wait(injected.task_id, 30).result == {"text": "by hand", "steps": 1}
        audit = client.control("audit_log", count=20).audit_log or []
        assert any(e.action == "inject.add" and injected.task_id in json.dumps(e.details) for e in audit)
        assert client.keys("list").keys == []


# ---------------------------------------------------------------- errors


def test_errors_are_the_servers_own_classes(system: Deployed) -> None:
    with Client(system.base_url) as client:
        with pytest.raises(TaskNotFoundError) as missing:
            client.get_task("0-nosuchtask")
        assert missing.value.task_id == "0-nosuchtask" and str(missing.value) == "task 0-nosuchtask not found"
        with pytest.raises(InvalidParamsError) as invalid:
            client.run_task("echo", "x", priority=11)
        assert list(invalid.value.fields) == ["params.priority"]
        done = client.run_task("echo", "done", wait=30)
        with pytest.raises(TaskNotCancellableError) as finished:
            client.cancel_task(done.task_id)
        assert finished.value.status == "succeeded"
        with pytest.raises(SagaNotFoundError) as no_saga:
            client.get_saga("nosaga")
        assert no_saga.value.saga_id == "nosaga"
        with pytest.raises(RpcError) as unknown:
            client.call("no_such_method")
        assert unknown.value.code == -32601


def test_a_full_queue_is_waited_out_and_the_task_runs_once(system: Deployed,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with Client(system.base_url) as client:
        busy = [client.run_task("echo", f"busy {i}", context={"delay_ms": 1500, "steps": 3}).task_id
                for i in range(ACTIVE_LIMIT)]
        try:
            with Client(system.base_url, retries=Retries(max_retries=0)) as impatient, \
                    pytest.raises(QueueFullError) as full:
                impatient.run_task("echo", "refused")
            assert (full.value.limit, full.value.retry_after_s) == (ACTIVE_LIMIT, 0.2)
            before = task_count(system)
            with Client(system.base_url, retries=Retries(max_retries=100, budget_s=60)) as patient, \
                    caplog.at_level(logging.INFO, logger="orchestrator.client.protocol"):
                record = patient.run_task("echo", "patient", wait=30)
            assert isinstance(record, TaskRecord) and record.result == {"text": "patient", "steps": 1}
            retries = [r for r in caplog.records if r.getMessage() == "retrying"]
            assert retries and all("queue full" in r.__dict__["reason"] for r in retries)
            assert task_count(system) == before + 1
        finally:
            cancel_all(client, busy)


async def test_a_submit_whose_answer_was_lost_runs_once(system: Deployed) -> None:
    before = task_count(system)
    with SpoilingProxy(serve_port(system)) as proxy:
        async with AsyncClient(via(proxy, system)) as client:
            record = await client.run_task("echo", "once", wait=30)
    assert isinstance(record, TaskRecord) and record.status is TaskStatus.SUCCEEDED
    assert len(proxy.requests) == 2  # the first answer was lost: the client sent it again
    keys = [body_of(request)["params"]["idempotency_key"] for request in proxy.requests]
    assert keys == [record.idempotency_key] * 2
    assert task_count(system) == before + 1


# ---------------------------------------------------------------- events


def check_resumed(events: list[TaskEvent], proxy: SpoilingProxy, replay: list[TaskEvent]) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1))  # none lost, none repeated
    assert [e.type for e in events] == ["queued", "running", "progress", "progress", "progress", "succeeded"]
    assert events == replay  # the same as an unbroken stream of the finished task
    assert len(proxy.requests) == 2 and b"last-event-id: 2\r\n" in proxy.requests[1].lower()


def test_events_resume_after_a_dropped_connection(system: Deployed) -> None:
    with SpoilingProxy(serve_port(system), cut=b"id: 3\n") as proxy, Client(via(proxy, system)) as client:
        accepted = client.run_task("echo", "s", context={"delay_ms": 900, "steps": 3})
        events = list(client.events(accepted.task_id))
    with Client(system.base_url) as direct:
        check_resumed(events, proxy, list(direct.events(accepted.task_id)))
    assert events[-1].data["result"] == {"text": "s", "steps": 3}


async def test_async_events_resume_after_a_dropped_connection(system: Deployed) -> None:
    with SpoilingProxy(serve_port(system), cut=b"id: 3\n") as proxy:
        async with AsyncClient(via(proxy, system)) as client:
            accepted = await client.run_task("echo", "a", context={"delay_ms": 900, "steps": 3})
            events = [event async for event in client.events(accepted.task_id)]
    async with AsyncClient(system.base_url) as direct:
        check_resumed(events, proxy, [event async for event in direct.events(accepted.task_id)])


def test_events_of_an_unknown_task(system: Deployed) -> None:
    with Client(system.base_url) as client, pytest.raises(TaskNotFoundError):
        next(iter(client.events("0-nosuchtask")))


# ---------------------------------------------------------------- the CLI


def run_cli(system: Deployed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "--url", system.base_url, *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_schedules_commands(system: Deployed) -> None:
    def schedules(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "schedules", *args, "--url", system.base_url],
                              capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "80"})
        assert done.returncode == 0, done.stderr
        return done.stdout

    made = json.loads(schedules("create", "echo", '{"prompt": "nightly"}', "--cron", "30 2 * * *", "--timezone",
                                "Europe/Berlin", "--name", "nightly", "--json"))[0]
    assert made["spec"]["cron"] == "30 2 * * *" and len(made["upcoming"]) == 5
    listed = schedules("list")
    assert made["schedule_id"] in listed and "30 2 * * *" in listed and max(map(len, listed.splitlines())) <= 80
    assert json.loads(schedules("pause", made["schedule_id"], "--json"))[0]["paused"] is True
    assert "paused" in schedules("show", made["schedule_id"])
    assert "deleted schedule" in schedules("delete", made["schedule_id"])
    bad = subprocess.run([sys.executable, "-m", "orchestrator.cli", "schedules", "create", "echo", "{}", "--interval",
                          "soon", "--url", system.base_url], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "--interval 'soon': give a positive duration" in bad.stderr


def test_run_wait_exit_code_says_how_the_task_ended(system: Deployed) -> None:
    succeeded = run_cli(system, "--tool", "echo", "fine")
    assert succeeded.returncode == 0 and json.loads(succeeded.stdout)["status"] == "succeeded"
    failed = run_cli(system, "--tool", "broken", "hello")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["status"] == "failed" and " failed: " in failed.stderr
    unfinished = run_cli(system, "--tool", "echo", "slow", "--context", '{"delay_ms": 20000, "steps": 20}',
                         "--wait-s", "1")
    assert unfinished.returncode == 124, unfinished.stderr
    slow = json.loads(unfinished.stdout)
    assert slow["status"] in ("queued", "running") and "still" in unfinished.stderr
    with Client(system.base_url) as client:
        cancel_all(client, [slow["task_id"]])
        waiting = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", "--url", system.base_url,
                                    "--tool", "echo", "to cancel", "--context", '{"delay_ms": 20000, "steps": 20}'],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def started() -> bool:
                return any(r.tool == "echo" for r in client.status().running)

            wait_until(started, 60, "the CLI's task to run")
            cancel_all(client, [r.task_id for r in client.status().running])
            out, err = waiting.communicate(timeout=60)
        finally:
            waiting.kill()
    assert waiting.returncode == 1 and json.loads(out)["status"] == "cancelled", err


def test_top_fits_80_columns(system: Deployed) -> None:
    with Client(system.base_url) as client:
        task = client.run_task("echo", "top", context={"delay_ms": 20_000, "steps": 20})
        try:
            wait_until(lambda: any(r.task_id == task.task_id for r in client.status().running), 30, "it to run")
            status = client.status().model_dump(mode="json")
            figures = client.analytics(window_s=300).model_dump(mode="json")
            console = Console(width=80, record=True)
            console.print(cli._top_frame(client.base_url, status, figures, 300, time.time()))
        finally:
            cancel_all(client, [task.task_id])
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    row = next(line for line in lines if task.task_id in line)
    assert row.split()[:4] == [task.task_id, "echo", "5", "reasoning:0"]
    for pool in status["pools"]:
        assert any(line.split()[:2] == [pool["worker_type"], str(pool["workers"])] for line in lines)


def test_wait_returns_a_task_asking_for_input_and_provide_input_resumes_it(system: Deployed) -> None:
    ask = {"key": "name", "message": "Who?", "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                                                          "required": ["name"]}}
    with Client(system.base_url) as client:
        accepted = client.run_task("echo", input={"prompt": "hello", "ask": ask})
        waiting = client.wait(accepted.task_id, timeout_s=30)  # returns: it does not hang on a question
        assert waiting.status is TaskStatus.INPUT_REQUIRED and waiting.input_requests["name"].message == "Who?"
        with pytest.raises(InvalidParamsError) as refused:
            client.provide_input(accepted.task_id, {"name": 7})
        assert set(refused.value.fields) == {"params.input.name"}
        assert client.provide_input(accepted.task_id, {"name": "Ada"}, key="name").status is TaskStatus.QUEUED
        assert client.wait(accepted.task_id, timeout_s=30).result["answer"] == {"name": "Ada"}
        with pytest.raises(InputNotExpectedError):
            client.provide_input(accepted.task_id, {"name": "Bob"})

        shown = CliRunner().invoke(cli.app, ["run", "hi", "--tool", "echo", "--url", system.base_url,
                                             "--context", json.dumps({"ask": ask})])
        assert shown.exit_code == cli.INPUT_REQUIRED_EXIT, shown.output
        task_id = json.loads(shown.stdout)["task_id"]
        assert "waits for input 'name': Who?" in shown.stderr
        answered = CliRunner().invoke(cli.app, ["answer", task_id, '{"name": "Lin"}', "--url", system.base_url])
        assert answered.exit_code == 0, answered.output
        assert client.wait(task_id, timeout_s=30).result["answer"] == {"name": "Lin"}
