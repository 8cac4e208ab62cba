// Building the page without ever parsing data as HTML: every value becomes a text node.

/** An element: props are set as properties (`on*` as listeners), children are nodes or text. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name in node && !name.includes("-")) node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return node;
}

export function section(title, ...content) {
  return el("section", { "aria-label": title }, el("h2", {}, title), ...content);
}

/** A table of rows; each row is a list of cells (nodes or text). */
export function table(headings, rows, empty = "none") {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell))))));
}

export function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function time(unixS) {
  return unixS ? new Date(unixS * 1000).toISOString().replace("T", " ").slice(0, 19) : "—";
}

export function seconds(s) {
  return s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`
    : `${(s / 3600).toFixed(1)} h`;
}

export function badge(status) {
  return el("span", { class: `status status-${String(status).replace(/[^a-z_]/g, "")}` }, status);
}

export function link(href, text) {
  return el("a", { href }, text);
}

/** Ids go into links as one path segment. */
export function taskLink(id) {
  return link(`tasks/${encodeURIComponent(id)}`, id);
}

export function button(text, onclick, props = {}) {
  return el("button", { type: "button", onclick, ...props }, text);
}

/** An area for the outcome of an action (announced to screen readers). */
export function notice() {
  return el("p", { class: "notice", role: "status", "aria-live": "polite" });
}

export function say(area, text, bad = false) {
  area.textContent = text;
  area.classList.toggle("bad", bad);
}

/** Runs `action` from a button: disabled meanwhile, its outcome or error shown in `area`. */
export async function act(btn, area, action, done) {
  btn.disabled = true;
  try {
    const answer = await action();
    if (done) say(area, done(answer));
  } catch (error) {
    say(area, error.message, true);
  } finally {
    btn.disabled = false;
  }
}
