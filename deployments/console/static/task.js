// A task: its record, every event as it happens (streamed), partial output, result or error, links, actions.
import { ApiError, events, rpc } from "./api.js";
import { act, badge, button, el, json, notice, section, seconds, taskLink, time } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export function taskPage(main, me, taskId) {
  const recordArea = el("div", { id: "record" });
  const actions = el("div", { class: "actions", id: "actions" });
  const area = notice();
  const partial = el("pre", { class: "partial", id: "partial" });
  const partialSection = section("Partial output", partial);
  partialSection.hidden = true;
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  main.replaceChildren(el("h1", {}, "Task ", el("code", {}, taskId)), actions, area, recordArea, partialSection,
    section("Timeline", timeline));
  const page = { me, taskId, recordArea, actions, area, partial, partialSection, timeline, record: null };
  load(page).then(() => { if (page.record) follow(page); });
}

async function load(page) {
  try {
    page.record = await rpc("get_task", { task_id: page.taskId });
  } catch (error) {
    const text = error instanceof ApiError && error.code === -32001 ? "No such task." : error.message;
    page.recordArea.replaceChildren(el("p", { class: "bad", role: "alert" }, text));
    return;
  }
  page.recordArea.replaceChildren(...render(page.record));
  const offered = buttons(page);
  const names = offered.map((b) => b.textContent).join("|");
  if (names !== page.offered) page.actions.replaceChildren(...offered); // the same buttons: keep them (and focus)
  page.offered = names;
}

function render(r) {
  const facts = [
    ["Status", badge(r.status)], ["Tool", r.tool], ["Pool", r.worker_type], ["Priority", r.priority],
    ["Tenant", r.tenant ?? "—"], ["Agent", r.agent ?? "—"], ["Worker", r.worker ?? "—"],
    ["Attempts", r.attempts], ["Preemptions", r.preemptions], ["Created", time(r.created_at)],
    ["Started", time(r.started_at)], ["Finished", time(r.finished_at)],
    ["Queue wait", r.queue_wait_ms == null ? "—" : seconds(r.queue_wait_ms / 1000)],
    ["Run time", r.run_ms == null ? "—" : seconds(r.run_ms / 1000)],
    ["Parent", r.parent ? taskLink(r.parent) : "—"],
    ["Children", links(r.children)],
    ["Dead letter", r.dead_letter ?? "—"],
    ["Re-run of", r.rerun_of ? taskLink(r.rerun_of) : "—"],
    ["Re-runs", links(r.reruns ?? [])],
    ["Trace", trace(r)],
  ];
  const out = [section("Record", el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])))];
  out.push(section("Input", json(r.prompt == null ? r.input : { prompt: r.prompt, ...r.input })));
  if (r.progress != null) out.push(section("Progress", json(r.progress)));
  if (r.error) out.push(section("Error", el("p", { class: "bad", id: "task-error" }, `${r.error.code}: ${r.error.message}`)));
  if (r.status === "succeeded") out.push(section("Result", el("div", { id: "task-result" }, json(r.result))));
  return out;
}

/** The trace id; a link to the operator's tracing UI when the orchestrator is configured with one. */
function trace(r) {
  if (!r.trace_id) return "—";
  const id = el("code", {}, r.trace_id);
  return r.trace_url ? el("a", { href: r.trace_url, target: "_blank", rel: "noopener noreferrer", id: "trace-link" }, id) : id;
}

function links(ids) {
  return ids.length ? ids.flatMap((c, i) => (i ? [", ", taskLink(c)] : [taskLink(c)])) : "—";
}

function buttons(page) {
  const { me, record: r, area } = page;
  const out = [];
  const run = (text, action) => {
    const b = button(text, () => act(b, area, action, (answer) => `${text}: ${answer.status ?? answer.requeued ?? "done"}`)
      .then(() => load(page)));
    out.push(b);
  };
  if (!FINAL.has(r.status) && me.scopes.includes("submit")) run("Cancel task", () => rpc("cancel_task", { task_id: r.task_id }));
  if (r.status === "running" && me.admin) run("Preempt", () => rpc("control", { action: "preempt", task_id: r.task_id }));
  if (FINAL.has(r.status) && me.scopes.includes("submit")) {
    const b = button("Re-run", () => act(b, area, async () => {
      const again = await rpc("rerun_task", { task_id: r.task_id });
      location.assign(`tasks/${encodeURIComponent(again.task_id)}`);
    }));
    out.push(b);
  }
  if (r.dead_letter && me.admin) run("Requeue dead letter", () => rpc("control", { action: "requeue", task_id: r.task_id }));
  return out;
}

/** Streams the events to the end, resuming after the stream's time limit or a dropped connection. */
async function follow(page) {
  let last = 0;
  for (;;) {
    try {
      for await (const event of events(page.taskId, last)) {
        last = event.id;
        show(page, event);
        await load(page);
        if (FINAL.has(event.type)) return;
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return;
      const wait = (error.data && error.data.retry_after_s) || 1;
      page.area.textContent = `Event stream: ${error.message}; retrying`;
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
  }
}

function show(page, event) {
  const data = event.data;
  if (event.type === "progress" && data && typeof data === "object" && typeof data.delta === "string") {
    page.partialSection.hidden = false;
    page.partial.append(data.delta);
  }
  const detail = typeof data === "object" && data !== null && Object.keys(data).length ? JSON.stringify(data) : "";
  page.timeline.append(el("li", { "data-type": event.type },
    el("span", { class: "seq" }, `#${event.id}`), " ", badge(event.type), " ",
    el("span", { class: "detail" }, detail)));
}
