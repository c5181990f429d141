// The gateway's HTTP API, same origin. Errors become ApiError with the API's code and message.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const listeners = new Set();
/** Called with (ok: boolean, error?) after every request: the page's view of the gateway. */
export function onReachability(fn) {
  listeners.add(fn);
}
function report(ok, error) {
  for (const fn of listeners) fn(ok, error);
}

// The API key, when the gateway has keys: kept in sessionStorage (this tab, until it closes),
// never in localStorage, and sent as `Authorization: Bearer` on every request.
const KEY_ITEM = "petri.key";
export function getKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM) || "";
  } catch {
    return "";
  }
}
export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}
/** The headers that authenticate a request: none while no key is kept. */
export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

const authListeners = new Set();
/** Called with the ApiError when the gateway answers 401: it wants a (valid) key. */
export function onUnauthorized(fn) {
  authListeners.add(fn);
}

export async function api(method, path, { json, body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...authHeaders(), ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    const error = new ApiError(0, "unreachable", "The gateway does not answer.");
    report(false, error);
    throw error;
  }
  if (res.status >= 502 && res.status <= 504 && !isJson(res)) {
    // A proxy in front of the gateway answering for it: the gateway itself is away.
    const error = new ApiError(res.status, "unreachable", `The gateway does not answer (${res.status}).`);
    report(false, error);
    throw error;
  }
  report(true);
  if (!res.ok) {
    let code = "http_error", message = `${method} ${path}: HTTP ${res.status}`;
    try {
      const data = await res.json();
      if (data && data.error) ({ code, message } = data.error);
    } catch {
      // not JSON: keep the status line
    }
    const error = new ApiError(res.status, String(code), String(message));
    if (res.status === 401) for (const fn of authListeners) fn(error);
    throw error;
  }
  return res.status === 204 ? null : res.json();
}

function isJson(res) {
  return (res.headers.get("content-type") || "").startsWith("application/json");
}

export const sandboxPath = (sid) => `/v1/sandboxes/${encodeURIComponent(sid)}`;
export const executionPath = (sid, eid) =>
  `${sandboxPath(sid)}/executions/${encodeURIComponent(eid)}`;
export const servicePath = (sid, svid) =>
  `${sandboxPath(sid)}/services${svid ? `/${encodeURIComponent(svid)}` : ""}`;
export const filePath = (sid, path) =>
  `${sandboxPath(sid)}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
