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

export async function api(method, path, { json, body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
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
    throw new ApiError(res.status, String(code), String(message));
  }
  return res.status === 204 ? null : res.json();
}

function isJson(res) {
  return (res.headers.get("content-type") || "").startsWith("application/json");
}

export const sandboxPath = (sid) => `/v1/sandboxes/${encodeURIComponent(sid)}`;
export const executionPath = (sid, eid) =>
  `${sandboxPath(sid)}/executions/${encodeURIComponent(eid)}`;
export const filePath = (sid, path) =>
  `${sandboxPath(sid)}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
