// The orchestrator's own API, with the key kept for this browser session only (sessionStorage).

const KEY = "orchestrator.apiKey";
export const root = new URL("../", document.baseURI);

export function key() {
  return sessionStorage.getItem(KEY);
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const k = key();
  return k ? { ...extra, authorization: `Bearer ${k}` } : extra;
}

export class ApiError extends Error {
  constructor(status, error) {
    const { retryable, ...details } = (error && error.data) || {};
    const data = Object.keys(details).length ? ` (${JSON.stringify(details)})` : "";
    super(`${error ? error.message : `HTTP ${status}`}${data}`);
    this.status = status;
    this.code = error ? error.code : null;
    this.data = error ? error.data : null;
  }
}

/** One JSON-RPC call (API v2); raises ApiError with the server's error. */
export async function rpc(method, params = {}) {
  const reply = await fetch(new URL("v2/rpc", root), {
    method: "POST", cache: "no-store", credentials: "omit",
    headers: headers({ "content-type": "application/json" }),
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  let body = null;
  try {
    body = await reply.json();
  } catch {
    throw new ApiError(reply.status, null);
  }
  if (body.error) throw new ApiError(reply.status, body.error);
  return body.result;
}

/** The task's events after `after`, as {id, type, data}; EventSource cannot send the key, so fetch reads the
 * stream. Ends when the server ends the stream (the caller resumes from the last id). */
export async function* events(taskId, after, signal) {
  const url = new URL(`v1/tasks/${encodeURIComponent(taskId)}/events`, root);
  const extra = { accept: "text/event-stream" };
  if (after) extra["last-event-id"] = String(after);
  const reply = await fetch(url, { headers: headers(extra), cache: "no-store", credentials: "omit", signal });
  if (!reply.ok) {
    let error = null;
    try { error = (await reply.json()).error; } catch { /* not JSON */ }
    throw new ApiError(reply.status, error);
  }
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = parseFrame(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (frame) yield frame;
    }
  }
}

function parseFrame(text) {
  const frame = { id: 0, type: "message", data: "" };
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const field = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") frame.id = Number(value);
    else if (field === "event") frame.type = value;
    else if (field === "data") frame.data += value;
  }
  if (!frame.id) return null;
  try { frame.data = JSON.parse(frame.data); } catch { /* kept as text */ }
  return frame;
}
