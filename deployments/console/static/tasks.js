// Tasks: list_tasks's filters as a form, the matching tasks newest first, re-queried every 2 s, paged by cursor.
import { rpc } from "./api.js";
import { badge, button, el, section, table, taskLink, time } from "./dom.js";

const POLL_MS = 2000;
const STATUSES = ["scheduled", "waiting", "queued", "running", "preempted", "input_required", "succeeded", "failed",
  "cancelled"];

export function tasksPage(main, me) {
  const fields = filterFields(me);
  const results = el("div", { id: "task-list", "aria-live": "off" });
  const pager = el("div", { class: "actions" });
  // The filters applied and the cursors of the pages before this one: the form may be edited meanwhile.
  const view = { filters: {}, cursors: [null], next: null, shown: "", seq: 0 };
  const form = el("form", {
    class: "filters", "aria-label": "Filters", onsubmit: (event) => {
      event.preventDefault();
      view.filters = read();
      view.cursors = [null];
      query(view, results, pager, true);
    },
  }, ...fields.nodes, el("div", { class: "apply" }, el("button", { type: "submit" }, "Apply filters")));
  view.page = () => query(view, results, pager, true);
  main.replaceChildren(el("h1", {}, "Tasks"), section("Filters", form), section("Tasks, newest first", results, pager));
  const tick = async () => {
    await query(view, results, pager, false);
    setTimeout(tick, POLL_MS);
  };
  tick();
}

function filterFields(me) {
  const input = (id, label, props = {}) => [el("label", { htmlFor: id }, label),
    el("input", { id, spellcheck: false, autocomplete: "off", ...props })];
  const status = el("select", { id: "filter-status", multiple: true, size: STATUSES.length },
    STATUSES.map((s) => el("option", { value: s }, s)));
  const tools = el("datalist", { id: "filter-tools" });
  rpc("status").then((s) => tools.append(...s.tools.map((t) => el("option", { value: t.name }))), () => {});
  const groups = [
    [el("label", { htmlFor: "filter-status" }, "Status"), status],
    input("filter-tool", "Tool"),
    input("filter-worker-type", "Worker type"),
    input("filter-priority-min", "Priority min", { type: "number", min: 0, max: 10 }),
    input("filter-priority-max", "Priority max", { type: "number", min: 0, max: 10 }),
    input("filter-created-after", "Created after", { type: "datetime-local", step: 1 }),
    input("filter-created-before", "Created before", { type: "datetime-local", step: 1 }),
    me.admin ? input("filter-tenant", "Tenant") : null,
    input("filter-limit", "Rows per page", { type: "number", min: 1, max: 500, value: 50 }),
  ].filter(Boolean);
  groups[1][1].setAttribute("list", "filter-tools"); // `list` is a read-only property: an attribute only
  return { nodes: [...groups.map((g) => el("div", { class: "field" }, g)), tools] };
}

/** The form's filters as list_tasks params (empty fields left out; local times as unix seconds). */
function read() {
  const value = (id) => document.getElementById(id)?.value.trim() ?? "";
  const params = {};
  const statuses = [...document.getElementById("filter-status").selectedOptions].map((o) => o.value);
  if (statuses.length) params.status = statuses;
  for (const [id, name] of [["filter-tool", "tool"], ["filter-worker-type", "worker_type"], ["filter-tenant", "tenant"]]) {
    if (value(id)) params[name] = value(id);
  }
  for (const [id, name] of [["filter-priority-min", "priority_min"], ["filter-priority-max", "priority_max"],
    ["filter-limit", "limit"]]) {
    if (value(id)) params[name] = Number(value(id));
  }
  for (const [id, name] of [["filter-created-after", "created_after"], ["filter-created-before", "created_before"]]) {
    if (value(id)) params[name] = new Date(value(id)).getTime() / 1000;
  }
  return params;
}

/** Reads the current page; the table is rebuilt only when the rows changed (focus on a link survives). */
async function query(view, results, pager, moved) {
  const cursor = view.cursors[view.cursors.length - 1];
  const seq = ++view.seq; // a poll answered after the filters or the page changed is dropped
  let page;
  try {
    page = await rpc("list_tasks", { ...view.filters, ...(cursor ? { cursor } : {}) });
    if (seq !== view.seq) return;
  } catch (error) {
    if (seq !== view.seq) return;
    results.replaceChildren(el("p", { class: "bad", role: "alert" }, error.message));
    view.shown = "";
    return;
  }
  const signature = JSON.stringify(page);
  if (signature === view.shown && !moved) return;
  view.shown = signature;
  view.next = page.next_cursor;
  results.replaceChildren(table(["Task", "Status", "Tool", "Pool", "Priority", "Tenant", "Created", "Finished", "Error"],
    page.tasks.map((t) => [taskLink(t.task_id), badge(t.status), t.tool, t.worker_type, t.priority, t.tenant ?? "—",
      time(t.created_at), time(t.finished_at), t.error_code ?? ""]), "no task matches"));
  const pageNo = view.cursors.length;
  const focused = document.activeElement && pager.contains(document.activeElement) ? document.activeElement.textContent : null;
  pager.replaceChildren(...[
    pageNo > 1 ? button("First page", () => { view.cursors = [null]; view.page(); }) : null,
    el("span", { class: "hint" }, `page ${pageNo}`),
    view.next ? button("Next page", () => { view.cursors.push(view.next); view.page(); }) : null,
  ].filter(Boolean));
  if (focused) [...pager.querySelectorAll("button")].find((b) => b.textContent === focused)?.focus();
}
