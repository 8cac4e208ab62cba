// The console: who is calling (login when keys are checked), the navigation, and the page of this path.
import { ApiError, key, rpc, setKey } from "./api.js";
import { el, link, say } from "./dom.js";
import { overview } from "./overview.js";
import { opsPage } from "./ops.js";
import { sagaPage } from "./saga.js";
import { taskPage } from "./task.js";
import { tasksPage } from "./tasks.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");

async function start() {
  let me;
  try {
    me = await rpc("whoami");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return login(key() ? "That key was refused." : "");
    main.replaceChildren(el("p", { class: "bad", role: "alert" }, `The orchestrator did not answer: ${error.message}`));
    return;
  }
  navigation(me);
  route(me);
}

function login(problem) {
  setKey(null);
  nav.replaceChildren();
  const input = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: false });
  const area = el("p", { class: "notice", role: "alert" });
  if (problem) say(area, problem, true);
  const form = el("form", {
    class: "login", onsubmit: (event) => {
      event.preventDefault();
      setKey(input.value.trim());
      main.replaceChildren(el("p", {}, "Checking the key…"));
      start();
    },
  }, el("h1", {}, "Log in"),
  el("p", {}, "Enter an API key. It is kept in this tab's session storage only, and sent with each request."),
  el("label", { htmlFor: "api-key" }, "API key"), input, el("button", { type: "submit" }, "Log in"), area);
  main.replaceChildren(form);
  input.focus();
}

function navigation(me) {
  const who = me.auth ? `${me.key} · tenant ${me.tenant ?? "—"} · ${me.scopes.join(", ")}` : "auth off (loopback)";
  nav.replaceChildren(...[link("./", "Overview"), link("tasks", "Tasks"), me.admin ? link("ops", "Operations") : null,
    el("span", { class: "who", id: "who" }, who),
    me.auth ? el("button", { type: "button", onclick: () => { setKey(null); location.assign("./"); } }, "Log out")
      : null].filter(Boolean));
  for (const a of nav.querySelectorAll("a")) {
    if (new URL(a.href).pathname === location.pathname.replace(/\/ui$/, "/ui/")) a.setAttribute("aria-current", "page");
  }
}

function route(me) {
  const base = new URL(document.baseURI).pathname;
  const path = location.pathname.length > base.length ? location.pathname.slice(base.length) : "";
  const [page, id] = path.split("/").map(decodeURIComponent);
  if (page === "tasks" && id) taskPage(main, me, id);
  else if (page === "tasks") tasksPage(main, me);
  else if (page === "sagas" && id) sagaPage(main, me, id);
  else if (page === "ops") opsPage(main, me);
  else overview(main, me);
}

start();
