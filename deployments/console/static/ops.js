// Operations (admins): scale, pause/resume and drain pools, SLA targets, dead letters, the audit log.
import { rpc } from "./api.js";
import { act, button, el, notice, say, section, table, taskLink, time } from "./dom.js";

const POLL_MS = 2000;

export function opsPage(main, me) {
  if (!me.admin) {
    main.replaceChildren(el("h1", {}, "Operations"), el("p", { class: "bad" }, "Operations need a key with the admin scope."));
    return;
  }
  const area = notice();
  const pools = el("div", { id: "ops-pools" });
  const letters = el("div", { id: "ops-letters" });
  const audit = el("div", { id: "ops-audit" });
  main.replaceChildren(el("h1", {}, "Operations"), area, section("Pools", pools),
    section("Dead letters", letters), section("Audit log", audit));
  const page = { area, pools, letters, audit, shown: {} };
  const tick = async () => {
    try {
      await refresh(page);
    } catch (error) {
      say(area, `Could not refresh: ${error.message}`, true);
    }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

async function refresh(page) {
  const [status, dead, log] = await Promise.all([rpc("status"),
    rpc("control", { action: "dead_letters", count: 200 }), rpc("control", { action: "audit_log", count: 50 })]);
  const again = () => refresh(page);
  update(page, "pools", [status.pools, status.workers, status.sla], () => poolControls(status, page.area, again));
  update(page, "letters", dead.dead_letters, () => deadLetters(dead.dead_letters, page.area, again));
  update(page, "audit", log.audit_log, () => auditLog(log.audit_log));
}

/** Rebuilds one area when its data changed, keeping what is typed in its fields and where the focus is. */
function update(page, name, data, build) {
  const signature = JSON.stringify(data);
  if (page.shown[name] === signature) return;
  page.shown[name] = signature;
  const area = page[name];
  const typed = new Map([...area.querySelectorAll("input, textarea")].filter((f) => f.id && f.dataset.edited)
    .map((f) => [f.id, f.value]));
  const focused = area.contains(document.activeElement) ? document.activeElement.id : null;
  area.replaceChildren(...[build()].flat().filter(Boolean));
  for (const [id, value] of typed) {
    const field = document.getElementById(id);
    if (field) Object.assign(field, { value }).dataset.edited = "1";
  }
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  area.querySelectorAll("input, textarea").forEach((f) => f.addEventListener("input", () => { f.dataset.edited = "1"; }));
}

/** An element id made of data: only characters that need no escaping anywhere. */
function safe(text) {
  return text.replace(/[^A-Za-z0-9_-]/g, "_");
}

function control(btn, area, params, again) {
  const outcome = (answer) => `${params.action}: ${answer.done === false ? "not done" : "done"}`
    + (answer.sla_targets ? ` — targets now ${JSON.stringify(answer.sla_targets)}` : "");
  return act(btn, area, () => rpc("control", params), outcome)
    .then(again);
}

function poolControls(status, area, again) {
  return status.pools.map((p) => {
    const type = p.worker_type;
    const id = (what) => safe(`${what}-${type}`);
    const workers = el("input", { id: id("scale"), type: "number", min: 0, max: 1000, value: p.workers });
    const scale = button("Scale", () => control(scale, area, { action: "scale", worker_type: type, workers: Number(workers.value) }, again), { id: id("scale-button") });
    const pause = button(p.paused ? "Resume" : "Pause",
      () => control(pause, area, { action: p.paused ? "resume" : "pause", worker_type: type }, again), { id: id("pause") });
    const targets = el("textarea", { id: id("sla"), rows: 2, spellcheck: false, value: "{}" });
    const setTargets = button("Set SLA targets", () => {
      let parsed;
      try {
        parsed = JSON.parse(targets.value);
      } catch (error) {
        return say(area, `SLA targets are not JSON: ${error.message}`, true);
      }
      return control(setTargets, area, { action: "sla", worker_type: type, targets: parsed }, again);
    }, { id: id("sla-button") });
    const members = status.workers.filter((w) => w.worker_type === type);
    const drains = members.map((w) => {
      const b = button(`Drain ${w.name}`, () => control(b, area, { action: "drain", worker: w.name }, again), { disabled: w.draining, id: safe(`drain-${w.name}`) });
      return [w.name, `${w.running} / ${w.slots}`, w.draining ? "draining" : "active", b];
    });
    const decision = status.sla[type];
    return el("div", { class: "card pool", "data-pool": type }, el("h3", {}, type),
      el("p", {}, `${p.workers} workers · ${p.running} / ${p.slots} busy · ${p.queued} queued · ${p.paused ? "paused" : "dispatching"}`),
      el("div", { class: "inline" }, el("label", { htmlFor: workers.id }, "Workers"), workers, scale, pause),
      el("div", { class: "inline" }, el("label", { htmlFor: targets.id }, "SLA targets (JSON, e.g. {\"max_workers\": 4})"), targets, setTargets),
      decision ? el("p", { class: "hint" }, `SLA: ${JSON.stringify(decision)}`) : null,
      table(["Worker", "Busy / slots", "State", ""], drains, "no workers"));
  });
}

function deadLetters(letters, area, again) {
  const rows = letters.map((d) => {
    const b = button("Requeue", () => control(b, area, { action: "requeue", task_id: d.task_id }, again), { "aria-label": `Requeue ${d.task_id}`, id: safe(`requeue-${d.task_id}`) });
    return [taskLink(d.task_id), d.reason, d.attempts, b];
  });
  const all = button("Requeue all", async () => {
    all.disabled = true;
    let done = 0;
    for (const d of letters) {
      try {
        await rpc("control", { action: "requeue", task_id: d.task_id });
        done += 1;
      } catch (error) {
        say(area, `Requeue of ${d.task_id}: ${error.message}`, true);
      }
    }
    say(area, `Requeued ${done} of ${letters.length}`);
    again();
  });
  return [letters.length ? all : null, table(["Task", "Reason", "Attempts", ""], rows, "no dead letters")];
}

function auditLog(entries) {
  return table(["Time", "Who", "Action", "Details"],
    entries.map((e) => [time(e.time), e.who, e.action, JSON.stringify(e.details)]), "nothing yet");
}
