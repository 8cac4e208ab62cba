// A saga: its steps as boxes joined by arrows, each with its status, compensation and the tasks it ran.
import { ApiError, rpc } from "./api.js";
import { act, badge, button, el, link, notice, section, taskLink, time } from "./dom.js";

const POLL_MS = 2000;
const FINAL = new Set(["succeeded", "failed", "cancelled", "failed_compensation"]);
const RERUNNABLE = new Set(["failed", "cancelled"]);

export function sagaPage(main, me, sagaId) {
  const body = el("div", { id: "saga" });
  const actions = el("div", { class: "actions", id: "actions" });
  const area = notice();
  main.replaceChildren(el("h1", {}, "Saga ", el("code", {}, sagaId)), actions, area, body);
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
    if (signature !== shown) {
      body.replaceChildren(...render(saga));
      actions.replaceChildren(...buttons(saga, me, area));
    }
    shown = signature;
    if (!FINAL.has(saga.status)) setTimeout(tick, POLL_MS);
  };
  tick();
}

function render(saga) {
  const facts = [["Status", badge(saga.status)], ["Workflow", saga.workflow], ["Tenant", saga.tenant ?? "—"],
    ["Priority", saga.priority], ["Created", time(saga.created_at)], ["Finished", time(saga.finished_at)]];
  if (saga.error) facts.push(["Error", saga.error]);
  facts.push(["Re-run of", saga.rerun_of ? sagaLink(saga.rerun_of) : "—"],
    ["Re-runs", (saga.reruns ?? []).length ? saga.reruns.flatMap((id, i) => (i ? [", ", sagaLink(id)] : [sagaLink(id)])) : "—"]);
  // The stages from the definition; a parallel group's branches are drawn side by side in one column.
  const states = Object.fromEntries(saga.steps.map((s) => [s.name, s]));
  const box = (s) => el("li", { class: `step step-${states[s.name]?.status ?? "pending"}` }, stepBox(states[s.name], s));
  const graph = el("ol", { class: "graph", "aria-label": "Steps, in order" });
  saga.definition.steps.forEach((stage, i) => {
    if (i) graph.append(el("li", { class: "arrow", "aria-hidden": "true" }, "→"));
    graph.append(stage.parallel
      ? el("li", { class: "group", "data-group": stage.name }, el("span", { class: "group-name" }, `${stage.name} (in parallel)`),
        el("ol", { class: "branches", "aria-label": `${stage.name}: steps run in parallel` }, stage.parallel.map(box)))
      : box(stage));
  });
  return [section("Saga", el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
    section("Steps", graph)];
}

function sagaLink(id) {
  return link(`sagas/${encodeURIComponent(id)}`, id);
}

function buttons(saga, me, area) {
  if (!RERUNNABLE.has(saga.status) || !me.scopes.includes("submit")) return [];
  const b = button("Re-run", () => act(b, area, async () => {
    const again = await rpc("rerun_saga", { saga_id: saga.saga_id });
    location.assign(`sagas/${encodeURIComponent(again.saga_id)}`);
  }));
  return [b];
}

function stepBox(step, definition) {
  const attempts = (list, what) => list.filter((a) => a.task_id).map((a, i) =>
    el("li", {}, `${what} ${i + 1}: `, taskLink(a.task_id), ` (${a.status})`));
  const compensation = step.compensation !== "none"
    ? el("p", { class: "compensation" }, "compensation: ", badge(step.compensation),
      step.compensation_error ? ` — ${step.compensation_error}` : "")
    : definition && definition.compensation ? el("p", { class: "hint" }, `undone by ${definition.compensation.tool}`) : null;
  const waits = Object.entries(step.input_requests ?? {}).map(([key, request]) =>
    el("p", { class: "waits" }, badge("input_required"), ` ${key}: ${request.message} — answer on its task's page`));
  return [el("h3", {}, step.name), el("p", {}, definition ? definition.tool : ""), badge(step.status),
    step.error ? el("p", { class: "bad" }, step.error) : null, ...waits, compensation,
    el("ul", { class: "attempts" }, attempts(step.attempts, "attempt"), attempts(step.compensation_attempts, "undo"))];
}
