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
  page.recordArea.replaceChildren(...inputForms(page), ...render(page.record));
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

/** What the task waits for (status input_required): each request's message and, for a key that may submit, a
 * form made from its schema (a JSON text area when the schema is not a flat object); the server checks the answer. */
function inputForms(page) {
  const r = page.record;
  if (r.status !== "input_required") return [];
  const may = page.me.scopes.includes("submit");
  return Object.entries(r.input_requests).map(([key, request]) => section(`Waiting for input: ${key}`,
    el("p", { class: "ask" }, request.message),
    may ? answerForm(page, key, request.schema) : el("p", { class: "empty" }, "(a key with the submit scope may answer)")));
}

const SIMPLE = new Set(["boolean", "string", "number", "integer"]);

function answerForm(page, key, schema) {
  const props = schema && schema.type === "object" && schema.properties ? Object.entries(schema.properties) : null;
  const flat = props && props.length && props.every(([, p]) => SIMPLE.has(p.type));
  const fields = flat ? props.map(([name, p]) => field(key, name, p, (schema.required ?? []).includes(name)))
    : [el("label", { for: `answer-${key}` }, "Answer (JSON)"),
       el("textarea", { id: `answer-${key}`, name: "json", rows: 4, cols: 60 }, "{}")];
  const form = el("form", { class: "answer", "data-key": key }, ...fields);
  const send = el("button", { type: "submit" }, "Answer");
  form.append(send);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(send, page.area, async () => {
      const input = flat ? collect(form, props) : JSON.parse(form.elements.json.value);
      const answer = await rpc("provide_input", { task_id: page.record.task_id, key, input });
      await load(page); // a refused answer keeps the form as it was filled
      return answer;
    }, (answer) => `Answered ${answer.key}: the task is ${answer.status}`);
  });
  return form;
}

function field(key, name, prop, required) {
  const id = `answer-${key}-${name}`;
  const label = el("label", { for: id }, prop.description ? `${name} (${prop.description})` : name);
  if (prop.type === "boolean") return el("p", {}, el("input", { id, name, type: "checkbox" }), " ", label);
  const kind = prop.type === "string" ? "text" : "number";
  return el("p", {}, label, " ", el("input", { id, name, type: kind, required, step: prop.type === "number" ? "any" : undefined }));
}

function collect(form, props) {
  const out = {};
  for (const [name, p] of props) {
    const input = form.elements[name];
    if (p.type === "boolean") out[name] = input.checked;
    else if (input.value !== "") out[name] = p.type === "string" ? input.value : Number(input.value);
  }
  return out;
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
