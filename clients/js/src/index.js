// Petri's JavaScript client: sandboxes, files, runs and event streams that resume.
// ESM, no dependencies beyond `fetch` (Node >= 20 and browsers). Types: index.d.ts.
//
//   import { Sandbox } from "petri-client";
//   const sb = await Sandbox.create("python", { url: "http://127.0.0.1:8000" });
//   const ex = await sb.runCode("print(1 + 1)", { onStdout: (t) => console.log(t) });
//   await sb.delete();

const DEFAULT_URL = "http://127.0.0.1:8000";
const TERMINAL = new Set(["exit", "error"]);
const KNOWN = new Set([
  "start", "install", "stdout", "stderr", "truncated", "app", "ready", "report", "exit", "error",
]);

// --- errors ----------------------------------------------------------------------------------

/** The root of every error: `status` (0 without an answer), `code`, `message`. */
export class PetriError extends Error {
  constructor(message, { status = 0, code = "petri_error" } = {}) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
  }
}
export class InvalidRequest extends PetriError {}
export class Unauthorized extends PetriError {}
export class NotFound extends PetriError {}
export class SandboxNotFound extends NotFound {}
export class ExecutionNotFound extends NotFound {}
export class FileNotFound extends NotFound {}
export class Conflict extends PetriError {}
export class Expired extends PetriError {}
export class TooLarge extends PetriError {}
export class QuotaExceeded extends PetriError {}
export class GatewayError extends PetriError {}
export class GatewayUnavailable extends PetriError {}
export class RequestTimeout extends PetriError {}
/** The run ended with an `error` event; `execution` holds what it produced before. */
export class ExecutionFailed extends PetriError {}
export class InstallFailed extends ExecutionFailed {}

const BY_CODE = {
  sandbox_not_found: SandboxNotFound,
  sandbox_gone: SandboxNotFound,
  workspace_gone: SandboxNotFound,
  execution_not_found: ExecutionNotFound,
  unauthorized: Unauthorized,
  quota_exceeded: QuotaExceeded,
  shutting_down: GatewayUnavailable,
  docker_unavailable: GatewayUnavailable,
};
const BY_STATUS = {
  400: InvalidRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 405: InvalidRequest,
  409: Conflict, 410: Expired, 413: TooLarge, 415: InvalidRequest, 422: InvalidRequest,
  429: QuotaExceeded, 502: GatewayUnavailable, 503: GatewayUnavailable, 504: GatewayUnavailable,
};

async function errorFrom(response, notFound = NotFound) {
  const raw = await response.text().catch(() => "");
  let code = "";
  let message = raw.slice(0, 300) || `HTTP ${response.status}`;
  try {
    const { error } = JSON.parse(raw);
    if (error && typeof error.code === "string") ({ code, message } = error);
  } catch {
    // not Petri's JSON: a proxy in the way
  }
  let Cls = BY_CODE[code] ?? BY_STATUS[response.status]
    ?? (response.status >= 500 ? GatewayError : InvalidRequest);
  if (Cls === NotFound) Cls = notFound;
  const err = new Cls(message, { status: response.status, code: code || "http_error" });
  if (err instanceof QuotaExceeded) {
    const after = Number(response.headers.get("retry-after"));
    err.retryAfter = Number.isFinite(after) ? after : null;
  }
  return err;
}

// --- the SSE reader ----------------------------------------------------------------------------

/** Server-Sent Events from a byte stream, as the HTML spec reads them: comment lines (keep-alives)
 * never make an event; the last id carries over. Yields {id, type, data} strings. */
export async function* readSSE(body) {
  const decoder = new TextDecoder();
  let buffer = "";
  let lastId = "";
  let type = "";
  let data = [];
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let at;
      while ((at = buffer.search(/\r\n|\r|\n/)) >= 0) {
        if (buffer[at] === "\r" && at === buffer.length - 1) break; // \r\n may be split
        const line = buffer.slice(0, at);
        buffer = buffer.slice(buffer.startsWith("\r\n", at) ? at + 2 : at + 1);
        if (line === "") {
          if (data.length) yield { id: lastId, type: type || "message", data: data.join("\n") };
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let value2 = colon < 0 ? "" : line.slice(colon + 1);
        if (value2.startsWith(" ")) value2 = value2.slice(1);
        if (name === "data") data.push(value2);
        else if (name === "event") type = value2;
        else if (name === "id" && !value2.includes("\0")) lastId = value2;
      }
    }
  } finally {
    reader.releaseLock?.();
  }
}

/** A typed event, or null for what is not a Petri event this client knows. */
export function parseEvent(raw, after = 0) {
  if (!/^[0-9]{1,15}$/.test(raw.id) || Number(raw.id) <= after || !KNOWN.has(raw.type)) {
    return null;
  }
  let data;
  try {
    data = JSON.parse(raw.data);
  } catch {
    return null;
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) return null;
  return { id: Number(raw.id), type: raw.type, data, terminal: TERMINAL.has(raw.type) };
}

// --- the client --------------------------------------------------------------------------------

const env = (name) => (typeof process !== "undefined" ? process.env?.[name] : undefined);
const quote = (s) => encodeURIComponent(s);
const filePath = (p) =>
  String(p).replace(/^\/sandbox(\/|$)/, "").replace(/^\/+/, "").replace(/^(\.\/)+/, "")
    .split("/").map(encodeURIComponent).join("/");

/** One gateway: `url` (else PETRI_URL, else http://127.0.0.1:8000) and `apiKey` (else
 * PETRI_API_KEY). `timeout` (ms) bounds each ordinary call, never a run; a stream silent for
 * `stallTimeout` ms (keep-alives included) is taken for dead and resumed. */
export class Client {
  constructor({ url, apiKey, timeout = 30_000, stallTimeout = 90_000, reconnectFor = 60_000,
    fetch: fetchImpl } = {}) {
    this.url = String(url ?? env("PETRI_URL") ?? DEFAULT_URL).replace(/\/+$/, "");
    if (!this.url.includes("://")) this.url = `http://${this.url}`;
    this.apiKey = apiKey ?? env("PETRI_API_KEY") ?? null;
    this.timeout = timeout;
    this.stallTimeout = stallTimeout;
    this.reconnectFor = reconnectFor;
    this.fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.apiKey) h.Authorization = `Bearer ${this.apiKey}`;
    return h;
  }

  /** One call; an error answer or a failed connection throws a PetriError. */
  async request(method, path, { json, body, headers = {}, notFound } = {}) {
    const init = { method, headers: this.headers(headers), signal: AbortSignal.timeout(this.timeout) };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      init.body = body;
    }
    let response;
    try {
      response = await this.fetch(this.url + path, init);
    } catch (err) {
      throw this.transportError(err);
    }
    if (response.status >= 400) throw await errorFrom(response, notFound);
    return response;
  }

  async json(method, path, options) {
    const response = await this.request(method, path, options);
    return response.status === 204 ? null : response.json();
  }

  transportError(err) {
    if (err?.name === "TimeoutError") {
      return new RequestTimeout(`no answer from the Petri gateway at ${this.url} in time`,
        { code: "request_timeout" });
    }
    return new GatewayUnavailable(
      `cannot reach the Petri gateway at ${this.url}: is it running? (start one with ` +
        "`petri serve`, or point PETRI_URL at one)",
      { code: "gateway_unreachable" },
    );
  }

  /** The events of a run, resuming after drops: starts it when `body` is given (with an
   * Idempotency-Key, so a retry never runs it twice), else follows `executionId`. */
  async *events(sandboxId, { body, executionId, after = 0 } = {}) {
    const base = `/v1/sandboxes/${quote(sandboxId)}`;
    const key = `js-${globalThis.crypto.randomUUID()}`;
    let last = after;
    let failingSince = null;
    let attempts = 0;
    for (;;) {
      const abort = new AbortController();
      let timer = setTimeout(() => abort.abort(), this.stallTimeout);
      const init = { signal: abort.signal, headers: this.headers({ Accept: "text/event-stream" }) };
      let url;
      if (executionId === undefined) {
        url = `${base}/exec`;
        Object.assign(init, { method: "POST", body: JSON.stringify(body) });
        Object.assign(init.headers, { "Content-Type": "application/json", "Idempotency-Key": key });
      } else {
        url = `${base}/executions/${quote(executionId)}/events`;
        init.headers["Last-Event-ID"] = String(last);
      }
      let failure = null;
      try {
        const response = await this.fetch(this.url + url, init);
        if (response.status >= 400) throw await errorFrom(response);
        executionId ??= response.headers.get("x-execution-id") ?? undefined;
        failingSince = null;
        attempts = 0;
        const reset = () => {
          clearTimeout(timer);
          timer = setTimeout(() => abort.abort(), this.stallTimeout);
        };
        for await (const raw of readSSE(tap(response.body, reset))) {
          const event = parseEvent(raw, last);
          if (!event) continue;
          last = event.id;
          yield event;
          if (event.terminal) return;
        }
      } catch (err) {
        if (err instanceof PetriError) throw err;
        failure = err;
      } finally {
        clearTimeout(timer);
        abort.abort();
      }
      const now = Date.now();
      failingSince ??= now;
      attempts += 1;
      if (now - failingSince > this.reconnectFor) {
        throw failure ? this.transportError(failure)
          : new GatewayUnavailable("the event stream kept ending early", { code: "stream_ended" });
      }
      await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** attempts)));
    }
  }
}

/** The body, calling `onChunk` for every chunk read (a sign of life, keep-alives included). */
function tap(body, onChunk) {
  const reader = body.getReader();
  return new ReadableStream({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else {
        onChunk();
        controller.enqueue(value);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

// --- results -----------------------------------------------------------------------------------

/** Builds the result of a run from its events, calling the callbacks as they arrive. */
async function collect(events, { onStdout, onStderr, onInstall, onEvent } = {}) {
  const out = [];
  const err = [];
  const install = [];
  const app = [];
  const ex = {
    id: "", sandboxId: "", stdout: "", stderr: "", exitCode: null, status: "running",
    timedOut: false, oomKilled: false, killed: false, truncated: false, signal: null,
    durationMs: null, install: "", appOutput: "", missingModules: [], tests: null, error: null,
  };
  for await (const event of events) {
    const { type, data } = event;
    if (type === "start") [ex.id, ex.sandboxId] = [data.execution_id, data.sandbox_id];
    else if (type === "stdout") {
      out.push(data.text);
      await onStdout?.(data.text);
    } else if (type === "stderr") {
      err.push(data.text);
      await onStderr?.(data.text);
    } else if (type === "install") {
      install.push(data.text);
      await onInstall?.(data.text);
    } else if (type === "app") app.push(data.text);
    else if (type === "truncated") ex.truncated = true;
    else if (type === "report") ex.tests = data;
    else if (type === "exit") {
      Object.assign(ex, {
        exitCode: data.exit_code, durationMs: data.duration_ms ?? null, timedOut: !!data.timed_out,
        oomKilled: !!data.oom_killed, killed: !!data.killed, signal: data.signal ?? null,
        missingModules: data.missing_modules ?? [],
        truncated: ex.truncated || !!data.truncated,
      });
      ex.tests ??= data.tests ?? null;
      ex.status = data.killed ? "killed" : data.timed_out ? "timed_out" : "exited";
    } else if (type === "error") {
      ex.error = data;
      ex.status = data.code === "interrupted" ? "interrupted" : "failed";
    }
    await onEvent?.(event);
  }
  Object.assign(ex, {
    stdout: out.join(""), stderr: err.join(""), install: install.join(""), appOutput: app.join(""),
  });
  ex.ok = ex.error === null && ex.exitCode === 0 && !(ex.tests?.failed || ex.tests?.errors);
  if (ex.error) {
    const Cls = ex.error.code === "install_failed" ? InstallFailed : ExecutionFailed;
    const failed = new Cls(ex.error.message ?? ex.error.code, { code: ex.error.code });
    failed.execution = ex;
    throw failed;
  }
  return ex;
}

function execBody(source, o = {}) {
  const body = { ...source };
  if (o.args !== undefined) body.args = o.args.map(String);
  if (o.timeout !== undefined) body.timeout_seconds = Math.max(1, Math.ceil(o.timeout));
  if (o.idleTimeout !== undefined) body.idle_timeout_seconds = Math.max(1, Math.ceil(o.idleTimeout));
  if (o.env !== undefined) body.env = o.env;
  if (o.stdin !== undefined) body.stdin = o.stdin;
  if (o.app !== undefined) {
    const { command, port, readyPath, readyTimeout } = o.app;
    body.app = { command, port };
    if (readyPath !== undefined) body.app.ready_path = readyPath;
    if (readyTimeout !== undefined) body.app.ready_timeout_seconds = Math.ceil(readyTimeout);
  }
  return body;
}

// --- sandboxes ---------------------------------------------------------------------------------

class Files {
  constructor(sandbox) {
    this.sb = sandbox;
  }

  url(path) {
    return `${this.sb.path}/files/${filePath(path)}`;
  }

  /** Write one file (string: UTF-8; or bytes). */
  async write(path, content) {
    return this.sb.client.json("PUT", this.url(path), { body: content });
  }

  /** A file as text (UTF-8). */
  async read(path) {
    return (await this.sb.client.request("GET", this.url(path), { notFound: FileNotFound })).text();
  }

  async readBytes(path) {
    const response = await this.sb.client.request("GET", this.url(path), { notFound: FileNotFound });
    return new Uint8Array(await response.arrayBuffer());
  }

  /** Every file under `path` (all by default): [{path, size, modified_at}]. */
  async list(path = "") {
    const { files } = await this.sb.client.json("GET", `${this.sb.path}/files`);
    const prefix = filePath(path) ? decodeURIComponent(filePath(path)) : "";
    return prefix ? files.filter((f) => f.path === prefix || f.path.startsWith(`${prefix}/`)) : files;
  }

  async remove(path) {
    await this.sb.client.request("DELETE", this.url(path), { notFound: FileNotFound });
  }

  /** Upload a zip (bytes), extracted into the workspace; returns the paths written. */
  async uploadZip(zip) {
    const { files } = await this.sb.client.json("POST", `${this.sb.path}/upload`, {
      body: zip, headers: { "Content-Type": "application/zip" },
    });
    return files;
  }
}

export class Sandbox {
  constructor(info, client) {
    this.info = info;
    this.id = info.id;
    this.language = info.language;
    this.client = client;
    this.path = `/v1/sandboxes/${quote(info.id)}`;
    this.files = new Files(this);
  }

  /** A new sandbox: `language` python, node, go or java. Options: url, apiKey, timeout, ttl,
   * env, limits, client. */
  static async create(language = "python", options = {}) {
    const client = options.client ?? new Client(options);
    const body = { language };
    if (options.ttl !== undefined) body.ttl_seconds = Math.ceil(options.ttl);
    if (options.env !== undefined) body.env = options.env;
    if (options.limits !== undefined) body.limits = options.limits;
    return new Sandbox(await client.json("POST", "/v1/sandboxes", { json: body }), client);
  }

  /** Run `fn(sandbox)` in a new sandbox that is deleted afterwards, whatever happens. */
  static async use(language, options, fn) {
    const sb = await Sandbox.create(language, options);
    try {
      return await fn(sb);
    } finally {
      await sb.delete();
    }
  }

  static async connect(sandboxId, options = {}) {
    const client = options.client ?? new Client(options);
    const info = await client.json("GET", `/v1/sandboxes/${quote(sandboxId)}`, {
      notFound: SandboxNotFound,
    });
    return new Sandbox(info, client);
  }

  static async list(options = {}) {
    const client = options.client ?? new Client(options);
    const found = [];
    let after = "";
    for (;;) {
      const query = `?limit=500${after ? `&after=${quote(after)}` : ""}`;
      const page = await client.json("GET", `/v1/sandboxes${query}`);
      found.push(...page.sandboxes);
      if (!page.next) return found;
      after = page.next;
    }
  }

  async getInfo() {
    this.info = await this.client.json("GET", this.path, { notFound: SandboxNotFound });
    return this.info;
  }

  /** Stop the container and remove the workspace (already gone: fine). */
  async delete() {
    try {
      await this.client.request("DELETE", this.path, { notFound: SandboxNotFound });
    } catch (err) {
      if (!(err instanceof SandboxNotFound)) throw err;
    }
  }

  runCode(code, options = {}) {
    return collect(this.client.events(this.id, { body: execBody({ code }, options) }), options);
  }

  runCommand(command, options = {}) {
    return collect(this.client.events(this.id, { body: execBody({ command }, options) }), options);
  }

  runFile(path, options = {}) {
    const filename = decodeURIComponent(filePath(path));
    return collect(this.client.events(this.id, { body: execBody({ filename }, options) }), options);
  }

  /** Test mode: the project's tests, with `tests` (the report) on the result. */
  runTests(path, options = {}) {
    const source = path ? { test: true, filename: decodeURIComponent(filePath(path)) } : { test: true };
    return collect(this.client.events(this.id, { body: execBody(source, options) }), options);
  }

  /** Typed events of a new run ({code} | {command} | {file} | {test: true}, plus options), or
   * of `executionId` after `after`; resumes dropped connections with Last-Event-ID. */
  stream({ code, command, file, test, executionId, after = 0, ...options } = {}) {
    if (executionId !== undefined) return this.client.events(this.id, { executionId, after });
    const source = {};
    if (code !== undefined) source.code = code;
    if (command !== undefined) source.command = command;
    if (file !== undefined) source.filename = decodeURIComponent(filePath(file));
    if (test) source.test = true;
    return this.client.events(this.id, { body: execBody(source, options) });
  }

  async kill(executionId) {
    return this.client.json("POST", `${this.path}/executions/${quote(executionId)}/kill`, {
      notFound: ExecutionNotFound,
    });
  }

  async executions() {
    return (await this.client.json("GET", `${this.path}/executions`)).executions;
  }
}
