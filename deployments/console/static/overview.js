// Overview: pools, the queue matrix, running tasks, the last hour, SLA, dead letters; polled every 2 s.
import { rpc } from "./api.js";
import { act, badge, button, el, json, notice, say, section, seconds, table, taskLink, time } from "./dom.js";
import { chart } from "./chart.js";

const POLL_MS = 2000;
const HOUR_S = 3600;

export function overview(main, me) {
  const live = el("div", { id: "live" });
  main.replaceChildren(el("h1", {}, "Overview"), live, forms(me));
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
  const [status, hour, letters, plans] = await Promise.all([
    rpc("status"), rpc("analytics", { window_s: HOUR_S, series: true }),
    me.admin ? rpc("control", { action: "dead_letters", count: 50 }) : null, rpc("list_schedules"),
  ]);
  show(live, shown, "error", null);
  const now = Date.now() / 1000;
  show(live, shown, "pools", pools(status), status.pools, status.workers);
  show(live, shown, "matrix", matrix(status.matrix), status.matrix);
  show(live, shown, "running", running(status.running, now), status.running, Math.floor(now));
  show(live, shown, "hour", lastHour(hour), hour.overall, hour.series);
  show(live, shown, "sla", sla(status.sla), status.sla);
  show(live, shown, "circuits", circuits(status.circuits), status.circuits);
  if (letters) show(live, shown, "letters", deadLetters(letters.dead_letters), letters.dead_letters);
  show(live, shown, "schedules", schedules(plans.schedules, me, () => refresh(live, me, shown)), plans.schedules);
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
  rpc("status").then((status) => {
    tool.append(...status.tools.map((t) => el("option", { value: t.name }, t.name)));
    if (status.tools.some((t) => t.name === "echo")) tool.value = "echo";
  });
  const input = el("textarea", { id: "submit-input", rows: 2, spellcheck: false, value: '{"prompt": "hello"}' });
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
  }, el("div", { class: "inline" }, el("label", { htmlFor: "submit-tool" }, "Tool"), tool,
    el("label", { htmlFor: "submit-priority" }, "Priority"), priority),
  el("label", { htmlFor: "submit-input" }, "Input (JSON)"), input,
  el("div", {}, el("button", { type: "submit" }, "Submit task")), area);
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

function lastHour(hour) {
  const o = hour.overall;
  const p95 = o.e2e_ms.p95;
  return section("Last hour",
    el("p", {}, `${o.tasks} tasks finished (${o.succeeded} succeeded, ${o.failed} failed, ${o.cancelled} cancelled); `,
      `throughput ${(o.throughput_per_s * 60).toFixed(2)} per minute; p95 latency ${p95 == null ? "—" : `${p95.toFixed(0)} ms`}.`),
    el("div", { class: "charts" },
      chart("Throughput (tasks finished per minute)", hour.series.map((m) => [m.at, m.tasks]), ...range(hour)),
      chart("p95 end-to-end latency (ms, minutes with finished tasks)",
        hour.series.filter((m) => m.e2e_p95_ms != null).map((m) => [m.at, m.e2e_p95_ms]), ...range(hour))));
}

/** The charts' time axis: from the first minute's start to the last one's. */
function range(hour) {
  const last = hour.series.length ? hour.series[hour.series.length - 1].at : hour.since;
  return [hour.since, last];
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

function circuits(byProvider) {
  return section("Provider circuits", table(["Provider", "Circuit"],
    Object.entries(byProvider).map(([provider, state]) => [provider, badge(state)]), "no LLM provider configured"));
}

function deadLetters(letters) {
  return section("Dead letters", table(["Task", "Reason", "Attempts"],
    letters.map((d) => [taskLink(d.task_id), d.reason, d.attempts]), "no dead letters"));
}

function schedules(list, me, again) {
  const area = notice();
  const act1 = (text, method, id) => {
    const b = button(text, () => act(b, area, () => rpc(method, { schedule_id: id }), () => `${text}: done`).then(again),
      { "aria-label": `${text} ${id}` });
    return b;
  };
  const rows = list.map((s) => [s.spec.name ?? s.schedule_id, s.spec.cron ? `${s.spec.cron} (${s.spec.timezone})` : `every ${s.spec.interval_s} s`,
    s.spec.tool, s.spec.tenant ?? "—", s.paused ? "paused" : time(s.next_ms / 1000), s.fired, s.skipped,
    s.last_task ? taskLink(s.last_task) : "—",
    me.scopes.includes("submit") ? el("span", { class: "inline" }, s.paused ? act1("Resume", "resume_schedule", s.schedule_id)
      : act1("Pause", "pause_schedule", s.schedule_id), act1("Delete", "delete_schedule", s.schedule_id)) : ""]);
  return section("Schedules", table(["Schedule", "When", "Tool", "Tenant", "Next tick", "Fired", "Skipped", "Last task", ""],
    rows, "no schedule"), area);
}
