// Overview: pools, the queue matrix, running tasks, the last hour, SLA, dead letters; polled every 2 s.
import { rpc } from "./api.js";
import { el, json, say, section, seconds, table, taskLink } from "./dom.js";
import { chart } from "./chart.js";

const POLL_MS = 2000;
const HOUR_S = 3600;
const samples = { throughput: [], p95: [] }; // taken by this page while it is open: analytics has no series

export function overview(main, me) {
  const live = el("div", { id: "live" });
  main.replaceChildren(el("h1", {}, "Overview"), forms(me), live);
  const shown = new Map();
  const tick = async () => {
    try {
      await refresh(live, me, shown);
    } catch (error) {
      show(live, shown, "error", el("p", { class: "bad", role: "alert" }, `Could not refresh: ${error.message}`));
    }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

async function refresh(live, me, shown) {
  const [status, hour, letters] = await Promise.all([
    rpc("status"), rpc("analytics", { window_s: HOUR_S }),
    me.admin ? rpc("control", { action: "dead_letters", count: 50 }) : null,
  ]);
  show(live, shown, "error", null);
  const now = Date.now() / 1000;
  show(live, shown, "pools", pools(status), status.pools, status.workers);
  show(live, shown, "matrix", matrix(status.matrix), status.matrix);
  show(live, shown, "running", running(status.running, now), status.running, Math.floor(now));
  record(hour);
  show(live, shown, "hour", lastHour(hour), hour.overall, samples.p95.length);
  show(live, shown, "sla", sla(status.sla), status.sla);
  if (letters) show(live, shown, "letters", deadLetters(letters.dead_letters), letters.dead_letters);
}

/** Puts section `name` in place, rebuilt only when its data changed (so focus and selection survive). */
function show(live, shown, name, node, ...data) {
  const signature = JSON.stringify(data);
  const old = shown.get(name);
  if (old && old.signature === signature && node) return;
  if (!node) {
    if (old) old.node.remove();
    shown.delete(name);
    return;
  }
  node.dataset.section = name;
  if (old) old.node.replaceWith(node);
  else live.append(node);
  shown.set(name, { node, signature });
}

function forms(me) {
  const id = el("input", { id: "open-id", required: true, maxLength: 64, spellcheck: false });
  const open = el("form", {
    class: "inline", onsubmit: (event) => {
      event.preventDefault();
      location.assign(`tasks/${encodeURIComponent(id.value.trim())}`);
    },
  }, el("label", { htmlFor: "open-id" }, "Task id"), id, el("button", { type: "submit" }, "Open task"));
  return el("div", { class: "forms" }, section("Open a task", open), me.scopes.includes("submit") ? submitForm() : null);
}

function submitForm() {
  const tool = el("select", { id: "submit-tool", required: true });
  rpc("status").then((status) => tool.append(...status.tools.map((t) => el("option", { value: t.name }, t.name))));
  const input = el("textarea", { id: "submit-input", rows: 4, spellcheck: false, value: '{"prompt": "hello"}' });
  const priority = el("input", { id: "submit-priority", type: "number", min: 0, max: 10, value: 5 });
  const area = el("p", { class: "notice", role: "alert" });
  const form = el("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      let parsed;
      try {
        parsed = JSON.parse(input.value);
      } catch (error) {
        return say(area, `The input is not JSON: ${error.message}`, true);
      }
      try {
        const accepted = await rpc("run_task", { tool: tool.value, input: parsed, priority: Number(priority.value) });
        location.assign(`tasks/${encodeURIComponent(accepted.task_id)}`);
      } catch (error) {
        say(area, error.message, true);
      }
    },
  }, el("label", { htmlFor: "submit-tool" }, "Tool"), tool,
  el("label", { htmlFor: "submit-input" }, "Input (JSON)"), input,
  el("label", { htmlFor: "submit-priority" }, "Priority"), priority,
  el("button", { type: "submit" }, "Submit task"), area);
  return section("Submit a task", form);
}

function pools(status) {
  const draining = (type) => status.workers.filter((w) => w.worker_type === type && w.draining).length;
  return section("Pools", table(["Pool", "Workers", "Busy / slots", "Queued", "Paused", "Draining"],
    status.pools.map((p) => [p.worker_type, p.workers, `${p.running} / ${p.slots}`, p.queued,
      p.paused ? "paused" : "no", draining(p.worker_type)])));
}

function matrix(byType) {
  const priorities = [...new Set(Object.values(byType).flatMap((row) => Object.keys(row)))]
    .map(Number).sort((a, b) => b - a);
  const rows = Object.entries(byType).map(([type, row]) => [type, ...priorities.map((p) => row[p] ?? 0)]);
  return section("Queued (pool × priority)",
    priorities.length ? table(["Pool", ...priorities.map((p) => `P${p}`)], rows) : el("p", { class: "empty" }, "nothing queued"));
}

function running(tasks, now) {
  return section("Running tasks", table(["Task", "Tool", "Priority", "Worker", "Tenant", "Running for"],
    tasks.map((t) => [taskLink(t.task_id), t.tool, t.priority, t.worker, t.tenant ?? "—", seconds(Math.max(0, now - t.since))]),
    "nothing running"));
}

function record(hour) {
  const at = Date.now() / 1000;
  for (const [name, value] of [["throughput", hour.overall.throughput_per_s * 60], ["p95", hour.overall.e2e_ms.p95]]) {
    const series = samples[name];
    if (value !== null && value !== undefined) series.push([at, value]);
    while (series.length && series[0][0] < at - HOUR_S) series.shift();
  }
}

function lastHour(hour) {
  const o = hour.overall;
  const p95 = o.e2e_ms.p95;
  return section("Last hour",
    el("p", {}, `${o.tasks} tasks finished (${o.succeeded} succeeded, ${o.failed} failed, ${o.cancelled} cancelled); `,
      `throughput ${(o.throughput_per_s * 60).toFixed(2)} per minute; p95 latency ${p95 == null ? "—" : `${p95.toFixed(0)} ms`}.`),
    el("div", { class: "charts" },
      chart("Throughput (tasks per minute, over the last hour)", samples.throughput),
      chart("p95 end-to-end latency (ms, over the last hour)", samples.p95)),
    el("p", { class: "hint" }, "Charted as sampled by this page every 2 s since it was opened."));
}

function sla(state) {
  const pools = Object.entries(state);
  return section("SLA state and decisions", pools.length
    ? el("div", { class: "cards" }, pools.map(([pool, fields]) => el("div", { class: "card" }, el("h3", {}, pool),
      typeof fields === "object" && fields !== null
        ? el("dl", {}, Object.entries(fields).flatMap(([k, v]) => [el("dt", {}, k),
          el("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]))
        : json(fields))))
    : el("p", { class: "empty" }, "no SLA decision yet"));
}

function deadLetters(letters) {
  return section("Dead letters", table(["Task", "Reason", "Attempts"],
    letters.map((d) => [taskLink(d.task_id), d.reason, d.attempts]), "no dead letters"));
}
