"""The web console (/ui) in a real browser (Debian's chromium, driven by Playwright) against a real orchestrator
with keys for two tenants, a read-only key and an operator: login, live task pages, cancel, requeue from ops,
tenant isolation, hidden actions that the API refuses anyway, the saga graph (a parallel group too), the task
list's filters, re-runs of tasks and sagas, schedules, and the security headers.

Set CONSOLE_SCREENSHOTS=<dir> to save the README's screenshots there."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from deployments.fake_provider import FakeProviderConfig
from orchestrator.auth import hash_key, new_key
from tests.conftest import Deployed, deployed, make_settings
from tests.fakeprovider import RunningFakeProvider, fake_provider
from tests.integration.test_durability import worker_pid
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.integration

KEYS = {"alice": ("alice", ["submit", "read"]), "bob": ("bob", ["submit", "read"]),
        "alice-reader": ("alice", ["read"]), "ops": ("ops", ["admin"])}
TOKENS = {name: new_key() for name in KEYS}
HELLO = {"name": "hello", "steps": [
    {"name": "greet", "tool": "echo", "input": {"prompt": "hello {{ input.who }}"},
     "compensation": {"tool": "echo", "input": {"prompt": "undo"}}},
    {"name": "answer", "tool": "echo", "input": {"prompt": "{{ steps.greet.output.text }}, again"}}]}
FAN = {"name": "fan", "steps": [
    {"name": "plan", "tool": "echo", "input": {"prompt": "plan"}},
    {"name": "checks", "parallel": [{"name": "lint", "tool": "echo", "input": {"prompt": "lint"}},
                                    {"name": "review", "tool": "echo", "input": {"prompt": "review"}}]},
    {"name": "ship", "tool": "echo", "input": {"prompt": "{{ steps.lint.output.text }} + {{ steps.review.output.text }}"}}]}
SLOW = {"name": "slow", "steps": [{"name": "wait", "tool": "echo",
                                    "input": {"prompt": "slow", "delay_ms": "{{ input.delay_ms }}", "steps": 1}}]}
LIVE_S = 60_000  # ms: a task that runs until it is cancelled
WAIT_MS = 30_000  # how long the browser may take to show what the test waits for
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningFakeProvider]:
    """An LLM that streams 40 tokens over about 4 s."""
    with fake_provider(FakeProviderConfig(latency_ms=4000, reply_tokens=40)) as running:
        yield running


@pytest.fixture(scope="module")
def system(redis_server: RedisServer, ray_session: int, provider: RunningFakeProvider) -> Iterator[Deployed]:
    keys = {name: {"hash": hash_key(TOKENS[name]), "tenant": tenant, "scopes": scopes}
            for name, (tenant, scopes) in KEYS.items()}
    llm = {"kind": "openai", "base_url": provider.base_url, "model": "fake-model", "worker_type": "codegen"}
    settings = make_settings(redis_server.url, auth={"keys": keys}, workflows={"hello": HELLO, "fan": FAN, "slow": SLOW}, tools={"fake-llm": llm},
                             router={"visibility_timeout_s": 2, "heartbeat_interval_s": 0.3, "max_attempts": 1})
    with deployed(settings, ray_session) as running:
        yield running


def call(system: Deployed, key: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = httpx.post(f"{system.base_url}/v2/rpc", json=body, timeout=30,
                       headers={"authorization": f"Bearer {TOKENS[key]}"})
    return dict(reply.json())


def ok(system: Deployed, key: str, method: str, params: dict[str, Any]) -> Any:
    reply = call(system, key, method, params)
    assert "error" not in reply, reply
    return reply["result"]


def long_task(system: Deployed, key: str, prompt: str, delay_ms: int = LIVE_S) -> str:
    params = {"tool": "echo", "input": {"prompt": prompt, "delay_ms": delay_ms, "steps": max(1, delay_ms // 500)}}
    return str(ok(system, key, "run_task", params)["task_id"])


def status_of(system: Deployed, task_id: str) -> str:
    return str(ok(system, "ops", "get_task", {"task_id": task_id})["status"])


def running(system: Deployed, task_id: str) -> None:
    wait_until(lambda: status_of(system, task_id) == "running", 30, f"{task_id} to run")


def login(page: Page, system: Deployed, key: str, path: str = "ui") -> None:
    page.goto(f"{system.base_url}/{path}")
    page.get_by_label("API key").fill(TOKENS[key])
    page.get_by_label("API key").press("Enter")  # the keyboard suffices
    expect(page.locator("#who")).to_contain_text(key, timeout=WAIT_MS)
    assert page.evaluate("Object.keys(sessionStorage)") == ["orchestrator.apiKey"]


def shot(page: Page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def test_the_console_is_served_with_a_strict_policy_and_needs_a_key(system: Deployed, page: Page) -> None:
    reply = httpx.get(f"{system.base_url}/ui/tasks/x", timeout=10)
    policy = reply.headers["content-security-policy"]
    assert reply.status_code == 200 and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert httpx.get(f"{system.base_url}/ui/static/..%2Fapi.py", timeout=10).status_code == 404
    page.goto(f"{system.base_url}/ui")
    expect(page.get_by_label("API key")).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("API key").fill("orch_not-a-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("refused", timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.length") == 0


def test_a_task_submitted_from_the_page_finishes_live_on_its_page(system: Deployed, page: Page) -> None:
    login(page, system, "alice")
    page.get_by_label("Tool").select_option("echo")
    hostile = "<img src=x onerror=document.title=1>"
    page.get_by_label("Input (JSON)").fill(f'{{"prompt": "{hostile}", "delay_ms": 2000, "steps": 4}}')
    page.get_by_role("button", name="Submit task").click()
    page.wait_for_url("**/ui/tasks/**", timeout=WAIT_MS)
    timeline = page.locator("#timeline")
    expect(timeline.locator("li[data-type=progress]").first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Cancel task")).to_be_visible()  # still running: it may be cancelled
    expect(timeline.locator("li[data-type=succeeded]")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#task-result")).to_contain_text(hostile)
    assert page.locator("#task-result img").count() == 0 and page.title() != "1"  # shown as text, never run
    expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    task_id = page.url.rsplit("/", 1)[1]
    assert status_of(system, task_id) == "succeeded"
    shot(page, "console-task.png")


def test_llm_output_shows_as_it_streams(system: Deployed, page: Page) -> None:
    task_id = ok(system, "alice", "run_task", {"tool": "fake-llm", "input": {"prompt": "stream please"}})["task_id"]
    login(page, system, "alice", f"ui/tasks/{task_id}")
    partial = page.locator("#partial")
    expect(partial).to_contain_text("tok1", timeout=WAIT_MS)
    expect(page.locator("#timeline li[data-type=succeeded]")).to_be_visible(timeout=WAIT_MS)
    text = ok(system, "alice", "get_task", {"task_id": task_id})["result"]["text"]
    assert text.endswith("tok40") and partial.inner_text().startswith("tok1")


def test_a_running_task_is_cancelled_from_its_page(system: Deployed, page: Page) -> None:
    task_id = long_task(system, "alice", "cancel me")
    running(system, task_id)
    login(page, system, "alice", f"ui/tasks/{task_id}")
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator("#timeline li[data-type=cancelled]")).to_be_visible(timeout=WAIT_MS)
    assert status_of(system, task_id) == "cancelled"


def test_an_operator_preempts_a_running_task_from_its_page(system: Deployed, page: Page) -> None:
    task_id = long_task(system, "alice", "preempt me")
    try:
        running(system, task_id)
        login(page, system, "ops", f"ui/tasks/{task_id}")
        page.get_by_role("button", name="Preempt").click()
        expect(page.locator("#timeline li[data-type=preempted]")).to_be_visible(timeout=WAIT_MS)
        wait_until(lambda: ok(system, "ops", "get_task", {"task_id": task_id})["preemptions"] == 1, 30, "a preemption")
    finally:
        ok(system, "ops", "cancel_task", {"task_id": task_id})


def test_a_tenant_sees_only_its_own_tasks(system: Deployed, page: Page) -> None:
    alices, bobs = long_task(system, "alice", "alice's"), long_task(system, "bob", "bob's")
    try:
        running(system, alices)
        running(system, bobs)
        login(page, system, "bob")
        table = page.locator("[data-section=running]")
        expect(table.get_by_role("link", name=bobs)).to_be_visible(timeout=WAIT_MS)
        expect(table.get_by_role("link", name=alices)).to_have_count(0)
        page.goto(f"{system.base_url}/ui/tasks/{alices}")
        expect(page.locator("#record")).to_contain_text("No such task", timeout=WAIT_MS)
    finally:
        for task_id in (alices, bobs):
            ok(system, "ops", "cancel_task", {"task_id": task_id})


def test_a_read_only_key_sees_no_actions_and_the_api_refuses_them(system: Deployed, page: Page) -> None:
    task_id = long_task(system, "alice", "read only")
    try:
        running(system, task_id)
        login(page, system, "alice-reader", f"ui/tasks/{task_id}")
        expect(page.locator("#timeline li[data-type=running]")).to_be_visible(timeout=WAIT_MS)
        assert page.locator("#actions button").count() == 0
        assert page.get_by_role("link", name="Operations").count() == 0
        page.goto(f"{system.base_url}/ui")
        expect(page.locator("[data-section=running]")).to_be_visible(timeout=WAIT_MS)
        assert page.get_by_role("button", name="Submit task").count() == 0
        refused = page.evaluate("""async (id) => {
            const api = await import("./static/api.js");
            try { await api.rpc("cancel_task", {task_id: id}); return null; } catch (e) { return e.code; }
        }""", task_id)
        assert refused == -32012 and status_of(system, task_id) == "running"
    finally:
        ok(system, "ops", "cancel_task", {"task_id": task_id})


def test_a_task_waiting_for_input_is_answered_from_its_page(system: Deployed, page: Page, browser: Browser) -> None:
    ask = {"key": "release", "message": "Release notes and go-ahead?", "schema": {
        "type": "object", "required": ["approve", "notes"],
        "properties": {"approve": {"type": "boolean"}, "notes": {"type": "string", "minLength": 3}}}}
    task_id = ok(system, "alice", "run_task", {"tool": "echo", "input": {"prompt": "ship", "ask": ask}})["task_id"]
    wait_until(lambda: status_of(system, task_id) == "input_required", 30, "the task to ask")
    reader = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        reading = reader.new_page()
        login(reading, system, "alice-reader", f"ui/tasks/{task_id}")  # may read, not answer
        expect(reading.locator("p.ask")).to_have_text("Release notes and go-ahead?", timeout=WAIT_MS)
        assert reading.get_by_role("button", name="Answer").count() == 0
    finally:
        reader.close()
    login(page, system, "alice", f"ui/tasks/{task_id}")
    expect(page.locator("#timeline li[data-type=input_required]")).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("approve").check()
    page.get_by_label("notes").fill("no")  # too short: the server names the field, nothing is stored
    page.get_by_role("button", name="Answer").click()
    expect(page.locator(".notice")).to_contain_text("params.input.notes", timeout=WAIT_MS)
    assert status_of(system, task_id) == "input_required"
    shot(page, "console-input.png")
    page.get_by_label("notes").fill("all tests green")
    page.get_by_label("notes").press("Enter")  # the keyboard suffices
    expect(page.locator("#timeline li[data-type=succeeded]")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#task-result")).to_contain_text("all tests green")
    assert ok(system, "alice", "get_task", {"task_id": task_id})["result"]["answer"] == {
        "approve": True, "notes": "all tests green"}


def test_an_operator_requeues_a_dead_letter_from_ops(system: Deployed, page: Page) -> None:
    task_id = long_task(system, "alice", "fragile", delay_ms=3000)
    running(system, task_id)
    os.kill(worker_pid(system), signal.SIGKILL)  # its only attempt is lost: a dead letter
    wait_until(lambda: status_of(system, task_id) == "failed", 60, "the task to be given up on")
    login(page, system, "ops", "ui/ops")
    letters = page.locator("#ops-letters")
    letters.get_by_role("button", name=f"Requeue {task_id}").click()
    expect(letters).to_contain_text("no dead letters", timeout=WAIT_MS)
    wait_until(lambda: status_of(system, task_id) == "succeeded", 60, "the requeued task to succeed")
    expect(page.locator("#ops-audit")).to_contain_text("requeue", timeout=WAIT_MS)
    pool = page.locator("[data-pool=codegen]")
    pool.get_by_role("button", name="Pause").click()
    expect(pool.get_by_role("button", name="Resume")).to_be_visible(timeout=WAIT_MS)
    assert paused(system, "codegen")
    pool.get_by_role("button", name="Resume").click()
    expect(pool.get_by_role("button", name="Pause")).to_be_visible(timeout=WAIT_MS)
    assert not paused(system, "codegen")
    pool.get_by_label("SLA targets").fill('{"min_workers": 1, "max_workers": 1}')
    pool.get_by_role("button", name="Set SLA targets").click()
    expect(page.get_by_role("status")).to_contain_text('"max_workers":1', timeout=WAIT_MS)


def paused(system: Deployed, pool: str) -> bool:
    return bool(next(p for p in ok(system, "ops", "status", {})["pools"] if p["worker_type"] == pool)["paused"])


def test_the_saga_page_draws_the_steps_with_links_to_their_tasks(system: Deployed, page: Page) -> None:
    saga_id = ok(system, "alice", "run_saga", {"workflow": "hello", "input": {"who": "console"}})["saga_id"]
    login(page, system, "alice", f"ui/sagas/{saga_id}")
    steps = page.locator(".graph .step")
    expect(steps).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator(".graph .step-succeeded")).to_have_count(2, timeout=WAIT_MS)
    expect(steps.first).to_contain_text("undone by echo")
    steps.nth(1).get_by_role("link").first.click()
    expect(page.locator("#task-result")).to_contain_text("hello console, again", timeout=WAIT_MS)


def test_the_saga_graph_draws_a_parallel_group_between_its_neighbours(system: Deployed, page: Page) -> None:
    saga_id = ok(system, "alice", "run_saga", {"workflow": "fan", "input": {}})["saga_id"]
    login(page, system, "alice", f"ui/sagas/{saga_id}")
    expect(page.locator(".graph .step-succeeded")).to_have_count(4, timeout=WAIT_MS)
    stages = page.locator(".graph > li:not(.arrow)")
    assert [stages.nth(i).get_attribute("class") for i in range(3)] == ["step step-succeeded", "group", "step step-succeeded"]
    branches = stages.nth(1).locator(".step h3")
    expect(branches).to_have_text(["lint", "review"])
    lint, review = (branches.nth(i).bounding_box() for i in range(2))
    assert lint and review and review["y"] > lint["y"] and abs(review["x"] - lint["x"]) < 1  # one column: side by side
    expect(stages.nth(2)).to_contain_text("ship")
    shot(page, "console-saga.png")


def test_the_task_list_filters_live_and_links_to_each_task(system: Deployed, page: Page) -> None:
    done = ok(system, "bob", "run_task", {"tool": "echo", "input": {"prompt": "listed"}, "wait": 30})["task_id"]
    other = long_task(system, "bob", "not listed")
    try:
        login(page, system, "bob", "ui/tasks")
        page.get_by_label("Status").select_option(["succeeded", "failed"])
        page.get_by_label("Tool").fill("echo")
        page.get_by_label("Tool").press("Enter")
        rows = page.locator("#task-list")
        expect(rows.get_by_role("link", name=done)).to_be_visible(timeout=WAIT_MS)
        expect(rows.get_by_role("link", name=other)).to_have_count(0)
        ok(system, "bob", "cancel_task", {"task_id": other})
        page.get_by_label("Worker type").focus()  # the page re-queries under the user without losing the form
        late = ok(system, "bob", "run_task", {"tool": "echo", "input": {"prompt": "late"}, "wait": 30})["task_id"]
        expect(rows.locator("tbody tr").first.get_by_role("link", name=late)).to_be_visible(timeout=WAIT_MS)
        assert page.evaluate("document.activeElement.id") == "filter-worker-type"
        assert page.get_by_label("Tool").input_value() == "echo" and rows.get_by_role("link", name=other).count() == 0
        shot(page, "console-tasks.png")
        page.get_by_label("Rows per page").fill("1")  # one row a page: the cursor leads from late to done
        page.get_by_role("button", name="Apply filters").click()
        expect(rows.locator("tbody tr")).to_have_count(1, timeout=WAIT_MS)
        expect(rows.get_by_role("link", name=late)).to_be_visible()
        page.get_by_role("button", name="Next page").click()
        rows.get_by_role("link", name=done).click()
        expect(page.locator("#task-result")).to_contain_text("listed", timeout=WAIT_MS)
    finally:
        if status_of(system, other) == "running":
            ok(system, "ops", "cancel_task", {"task_id": other})


def test_a_finished_task_is_rerun_from_its_page(system: Deployed, page: Page) -> None:
    first = ok(system, "alice", "run_task", {"tool": "echo", "input": {"prompt": "once more"}, "wait": 30})["task_id"]
    login(page, system, "alice", f"ui/tasks/{first}")
    page.get_by_role("button", name="Re-run").click()
    page.wait_for_url(lambda url: "/ui/tasks/" in url and not url.endswith(first), timeout=WAIT_MS)
    again = page.url.rsplit("/", 1)[1]
    record = page.locator("#record")
    expect(record.get_by_role("link", name=first)).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#task-result")).to_contain_text("once more", timeout=WAIT_MS)
    assert ok(system, "alice", "get_task", {"task_id": again})["rerun_of"] == first
    record.get_by_role("link", name=first).click()
    expect(page.locator("#record").get_by_role("link", name=again)).to_be_visible(timeout=WAIT_MS)


def test_a_cancelled_saga_is_rerun_from_its_page(system: Deployed, page: Page) -> None:
    first = ok(system, "alice", "run_saga", {"workflow": "slow", "input": {"delay_ms": LIVE_S}})["saga_id"]
    ok(system, "alice", "cancel_saga", {"saga_id": first})
    wait_until(lambda: ok(system, "alice", "get_saga", {"saga_id": first})["status"] == "cancelled", 30, "the cancel")
    login(page, system, "alice", f"ui/sagas/{first}")
    page.get_by_role("button", name="Re-run").click()
    page.wait_for_url(lambda url: "/ui/sagas/" in url and not url.endswith(first), timeout=WAIT_MS)
    again = page.url.rsplit("/", 1)[1]
    try:
        expect(page.locator("#saga").get_by_role("link", name=first)).to_be_visible(timeout=WAIT_MS)
        assert ok(system, "alice", "get_saga", {"saga_id": first})["reruns"] == [again]
        expect(page.get_by_role("button", name="Re-run")).to_have_count(0)  # running: nothing to re-run yet
    finally:
        ok(system, "alice", "cancel_saga", {"saga_id": again})


def test_a_read_only_key_cannot_rerun(system: Deployed, page: Page) -> None:
    task_id = ok(system, "alice", "run_task", {"tool": "echo", "input": {"prompt": "read"}, "wait": 30})["task_id"]
    login(page, system, "alice-reader", f"ui/tasks/{task_id}")
    expect(page.locator("#timeline li[data-type=succeeded]")).to_be_visible(timeout=WAIT_MS)
    assert page.get_by_role("button", name="Re-run").count() == 0
    assert call(system, "alice-reader", "rerun_task", {"task_id": task_id})["error"]["code"] == -32012
    assert ok(system, "alice", "get_task", {"task_id": task_id})["reruns"] == []


def test_schedules_are_paused_resumed_and_deleted_from_the_overview(system: Deployed, page: Page) -> None:
    params = {"name": "hourly-digest", "interval_s": 3600, "tool": "echo", "input": {"prompt": "digest"}}
    schedule_id = ok(system, "alice", "create_schedule", params)["schedule_id"]
    login(page, system, "alice")
    panel = page.locator("[data-section=schedules]")
    expect(panel).to_contain_text("hourly-digest", timeout=WAIT_MS)
    expect(panel).to_contain_text("every 3600")
    panel.get_by_role("button", name=f"Pause {schedule_id}").click()
    expect(panel.get_by_role("button", name=f"Resume {schedule_id}")).to_be_visible(timeout=WAIT_MS)
    assert ok(system, "alice", "get_schedule", {"schedule_id": schedule_id})["paused"] is True
    panel.get_by_role("button", name=f"Resume {schedule_id}").click()
    expect(panel.get_by_role("button", name=f"Pause {schedule_id}")).to_be_visible(timeout=WAIT_MS)
    assert ok(system, "alice", "get_schedule", {"schedule_id": schedule_id})["paused"] is False
    panel.get_by_role("button", name=f"Delete {schedule_id}").click()
    expect(panel).to_contain_text("no schedule", timeout=WAIT_MS)
    assert call(system, "alice", "get_schedule", {"schedule_id": schedule_id})["error"]["code"] == -32014


def test_the_overview_shows_pools_queues_and_the_last_hour(system: Deployed, page: Page) -> None:
    task_id = long_task(system, "alice", "for the picture")
    try:
        running(system, task_id)
        login(page, system, "ops")
        expect(page.locator("[data-section=pools]")).to_contain_text("reasoning", timeout=WAIT_MS)
        expect(page.locator("[data-section=running]").get_by_role("link", name=task_id)).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("[data-section=hour]")).to_contain_text("tasks finished", timeout=WAIT_MS)
        expect(page.locator("[data-section=hour] polyline").first).to_be_attached(timeout=WAIT_MS)
        hour = ok(system, "ops", "analytics", {"window_s": 3600, "series": True})
        assert len(hour["series"]) == 60 and sum(m["tasks"] for m in hour["series"]) == hour["overall"]["tasks"]
        expect(page.locator("[data-section=letters]")).to_be_visible()
        circuits = page.locator("[data-section=circuits]")
        expect(circuits).to_contain_text("deepseek")
        expect(circuits).to_contain_text("closed")
        shot(page, "console-overview.png")
    finally:
        ok(system, "ops", "cancel_task", {"task_id": task_id})


def test_with_auth_off_no_login_is_needed(orchestrator: Deployed, page: Page) -> None:
    page.goto(f"{orchestrator.base_url}/ui/ops")
    expect(page.locator("#who")).to_contain_text("auth off", timeout=WAIT_MS)
    expect(page.locator("[data-pool=reasoning]")).to_be_visible(timeout=WAIT_MS)
    assert page.get_by_label("API key").count() == 0 and page.get_by_role("button", name="Log out").count() == 0
