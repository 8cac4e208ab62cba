// A saga: its steps as boxes joined by arrows, each with its status, compensation and the tasks it ran.
import { ApiError, rpc } from "./api.js";
import { badge, el, section, taskLink, time } from "./dom.js";

const POLL_MS = 2000;
const FINAL = new Set(["succeeded", "failed", "cancelled", "failed_compensation"]);

export function sagaPage(main, me, sagaId) {
  const body = el("div", { id: "saga" });
  main.replaceChildren(el("h1", {}, "Saga ", el("code", {}, sagaId)), body);
  let shown = "";
  const tick = async () => {
    let saga;
    try {
      saga = await rpc("get_saga", { saga_id: sagaId });
    } catch (error) {
      const text = error instanceof ApiError && error.code === -32009 ? "No such saga." : error.message;
      body.replaceChildren(el("p", { class: "bad", role: "alert" }, text));
      return;
    }
    const signature = JSON.stringify(saga);
    if (signature !== shown) body.replaceChildren(...render(saga));
    shown = signature;
    if (!FINAL.has(saga.status)) setTimeout(tick, POLL_MS);
  };
  tick();
}

function render(saga) {
  const tools = Object.fromEntries(saga.definition.steps.map((s) => [s.name, s]));
  const facts = [["Status", badge(saga.status)], ["Workflow", saga.workflow], ["Tenant", saga.tenant ?? "—"],
    ["Priority", saga.priority], ["Created", time(saga.created_at)], ["Finished", time(saga.finished_at)]];
  if (saga.error) facts.push(["Error", saga.error]);
  const graph = el("ol", { class: "graph", "aria-label": "Steps, in order" });
  saga.steps.forEach((step, i) => {
    if (i) graph.append(el("li", { class: "arrow", "aria-hidden": "true" }, "→"));
    graph.append(el("li", { class: `step step-${step.status}` }, stepBox(step, tools[step.name])));
  });
  return [section("Saga", el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
    section("Steps", graph)];
}

function stepBox(step, definition) {
  const attempts = (list, what) => list.filter((a) => a.task_id).map((a, i) =>
    el("li", {}, `${what} ${i + 1}: `, taskLink(a.task_id), ` (${a.status})`));
  const compensation = step.compensation !== "none"
    ? el("p", { class: "compensation" }, "compensation: ", badge(step.compensation),
      step.compensation_error ? ` — ${step.compensation_error}` : "")
    : definition && definition.compensation ? el("p", { class: "hint" }, `undone by ${definition.compensation.tool}`) : null;
  return [el("h3", {}, step.name), el("p", {}, definition ? definition.tool : ""), badge(step.status),
    step.error ? el("p", { class: "bad" }, step.error) : null, compensation,
    el("ul", { class: "attempts" }, attempts(step.attempts, "attempt"), attempts(step.compensation_attempts, "undo"))];
}
