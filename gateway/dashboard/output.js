// One execution on screen: its event stream (EventSource, resumed without gaps or duplicates)
// and its output, rendered in batches once per animation frame.
import { api, ApiError, authHeaders, executionPath, getKey } from "./api.js";
import { commandOf, duration, el, outcome } from "./dom.js";

// Event types this page understands (DESIGN §4, §9). EventSource only dispatches named events
// someone listens to, so unknown types are ignored by construction.
const TYPES = ["start", "install", "stdout", "stderr", "truncated", "app", "ready", "report",
  "exit", "error"];
const BLOCK_CHARS = 32 * 1024; // a block is cut after a newline once it holds this much
const MAX_BLOCK_CHARS = 8 * BLOCK_CHARS; // ... or anywhere, for one endless line
const MAX_CASES = 2000;
// At most this much text is laid out per frame: a flood is shown over several frames while
// the page keeps answering, instead of in one frame that freezes it.
const FRAME_CHARS = 128 * 1024;

/** `n`, or `n - 1` where cutting at `n` would split a UTF-16 surrogate pair. */
function safeCut(text, n) {
  const c = text.charCodeAt(n - 1);
  return n > 1 && c >= 0xd800 && c <= 0xdbff ? n - 1 : n;
}

/**
 * A scrolling pane of output. Text waits in `pending` until the next frame, then consecutive
 * chunks of one stream become one text node. The pane is a column of blocks of up to ~32K
 * characters. All but the last two are "sealed" (`content-visibility: auto`, with a height
 * estimated from their line count until the browser has measured them): they are skipped while
 * off screen, so new output lays out only the newest blocks, and 10,000 lines (or 8 MiB) cost
 * no more than what is on screen.
 */
class Pane {
  constructor(node) {
    this.node = node;
    this.pending = [];
    this.block = null; // the block output goes into
    this.size = 0; // characters in it
    this.blockLines = []; // lines per block
    this.sealed = 0; // blocks before this index are sealed
    this.lineStart = true;
    this.lines = 0;
    this.stick = true; // follow the end until the reader scrolls up
    node.addEventListener("scroll", () => {
      this.stick = node.scrollHeight - node.scrollTop - node.clientHeight < 24;
      this.onstick?.(this.stick);
    });
  }

  push(kind, text) {
    if (text) this.pending.push([kind, text]);
  }

  /** Show what is pending, at most FRAME_CHARS of it; true when some is left for later. */
  flush() {
    const pending = this.pending;
    if (!pending.length) return false;
    let budget = FRAME_CHARS;
    let taken = 0;
    let kind = pending[0][0];
    let text = "";
    while (taken < pending.length && budget > 0) {
      let [k, t] = pending[taken];
      if (t.length > budget) { // split the chunk: the rest waits for the next frame
        const cut = safeCut(t, budget);
        pending[taken] = [k, t.slice(cut)];
        t = t.slice(0, cut);
      } else {
        taken++;
      }
      budget -= t.length;
      if (k !== kind) {
        this.append(kind, text);
        kind = k;
        text = "";
      }
      text += t;
    }
    this.append(kind, text);
    this.pending = pending.slice(taken);
    this.seal();
    if (this.stick) this.node.scrollTop = this.node.scrollHeight;
    return this.pending.length > 0;
  }

  append(kind, text) {
    // A big chunk is spread over blocks, cut after a newline where there is one.
    while (text.length > BLOCK_CHARS) {
      const cut = text.lastIndexOf("\n", BLOCK_CHARS - 1) + 1 || safeCut(text, BLOCK_CHARS);
      this.appendToBlock(kind, text.slice(0, cut));
      text = text.slice(cut);
    }
    if (text) this.appendToBlock(kind, text);
  }

  appendToBlock(kind, text) {
    const full = this.lineStart && this.size + text.length > BLOCK_CHARS;
    if (!this.block || (full && this.size > 0) || this.size >= MAX_BLOCK_CHARS) {
      this.block = this.node.appendChild(el("div", { class: "block" }));
      this.blockLines.push(0);
      this.size = 0;
    }
    const last = this.block.lastElementChild;
    if (last && last.dataset.kind === kind) last.firstChild.appendData(text);
    else this.block.append(el("span", { class: kind, "data-kind": kind }, text));
    this.size += text.length;
    this.lineStart = text.endsWith("\n");
    let lines = 0;
    for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) lines++;
    this.blockLines[this.blockLines.length - 1] += lines;
    this.lines += lines;
  }

  seal() {
    const blocks = this.node.children;
    if (this.sealed >= blocks.length - 2) return;
    this.linePx ||= parseFloat(getComputedStyle(this.node).lineHeight) || 18;
    for (; this.sealed < blocks.length - 2; this.sealed++) {
      const height = Math.max(1, this.blockLines[this.sealed]) * this.linePx;
      blocks[this.sealed].style.containIntrinsicSize = `auto ${Math.ceil(height)}px`;
      blocks[this.sealed].classList.add("sealed");
    }
  }

  toEnd() {
    this.stick = true;
    this.node.scrollTop = this.node.scrollHeight;
  }
}

export class RunView {
  /** Show execution `eid` of sandbox `sid` in `root`; `onEnd` runs once when it has ended. */
  constructor(root, sid, eid, { onEnd, eventsUrl = null }) {
    this.root = root;
    // With a key: the 202's events_url carries a token (EventSource cannot send headers);
    // a run without one (a replay, a deep link) is read with fetch and the key instead.
    this.eventsUrl = eventsUrl;
    this.abort = null;
    this.sid = sid;
    this.eid = eid;
    this.onEnd = onEnd;
    this.lastId = 0; // the last event id shown: nothing at or below it is shown again
    this.ended = false;
    this.reconnects = 0;
    this.failures = 0;
    this.es = null;
    this.timer = null;
    this.frame = 0;
    this.drained = null; // what to do once all pending output is shown
    this.startedAt = null;
    this.build();
    this.load();
    this.connect();
  }

  build() {
    const kill = el("button", { type: "button", id: "kill", class: "danger small", disabled: true },
      "Kill");
    kill.addEventListener("click", () => this.kill());
    const jump = el("button", { type: "button", id: "jump", class: "jump small", hidden: true },
      "↓ Follow output");
    this.head = {
      badge: el("span", { id: "run-badge", class: "badge running" }, "…"),
      command: el("code", { id: "run-command", class: "command" }),
      meta: el("span", { id: "run-meta", class: "meta muted" }),
      conn: el("span", { id: "run-conn", class: "conn", "data-state": "connecting" }, "connecting"),
      kill,
    };
    this.installCount = el("span", { id: "install-count", class: "muted" });
    this.installBox = el("details", { id: "install", class: "install-box", hidden: true },
      el("summary", {}, "Install output ", this.installCount),
      el("div", { class: "pane install-pane", tabindex: 0, "aria-label": "Install output" }));
    this.appBox = el("details", { id: "app", class: "app-box", open: true, hidden: true },
      el("summary", {}, "App output (the app under test)"),
      el("div", { class: "pane app-pane", tabindex: 0, "aria-label": "App output" }));
    const output = el("div", { id: "output", class: "pane output", tabindex: 0, role: "log",
      "aria-live": "off", "aria-label": "Program output" });
    this.notes = el("ul", { id: "run-notes", class: "notes" });
    this.reportBox = el("section", { id: "report", class: "report", hidden: true,
      "aria-label": "Test report" });
    this.end = el("p", { id: "run-end", class: "run-end", role: "status" });
    this.root.replaceChildren(
      el("div", { class: "run-head" }, this.head.badge, this.head.command, this.head.meta,
        el("span", { class: "spacer" }), this.head.conn, kill),
      el("p", { class: "legend muted" }, "Streams:", el("span", { class: "stdout" }, "stdout"),
        el("span", { class: "stderr" }, "stderr"), el("span", { class: "install" }, "install"),
        el("span", { class: "note" }, "gateway note")),
      this.installBox, this.appBox,
      el("div", { class: "output-wrap" }, output, jump),
      this.notes, this.reportBox, this.end);
    this.out = new Pane(output);
    this.install = new Pane(this.installBox.querySelector(".pane"));
    this.app = new Pane(this.appBox.querySelector(".pane"));
    this.out.onstick = (stick) => { jump.hidden = stick; };
    jump.addEventListener("click", () => { this.out.toEnd(); jump.hidden = true; output.focus(); });
    this.root.hidden = false;
  }

  /** The execution's record: what ran, and its status if it has ended already. */
  async load() {
    try {
      const x = await api("GET", executionPath(this.sid, this.eid));
      this.record = x;
      this.head.command.textContent = commandOf(x.argv) || this.eid;
      this.head.command.title = `${this.eid}: ${JSON.stringify(x.argv)}`;
      this.startedAt = Date.parse(x.created_at);
      if (this.ended && x.status === "running") return; // its record is a moment behind
      if (!this.ended) this.head.kill.disabled = x.status !== "running";
      this.showStatus(x);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) this.fail(error.message);
    }
  }

  showStatus(x) {
    const [cls, label] = outcome(x);
    this.head.badge.className = `badge ${cls}`;
    this.head.badge.textContent = label;
    const parts = [];
    if (x.exit_code !== null && x.exit_code !== undefined) parts.push(`exit code ${x.exit_code}`);
    if (x.duration_ms !== null && x.duration_ms !== undefined) parts.push(duration(x.duration_ms));
    if (x.error_code) parts.push(x.error_code);
    if (x.status !== "running" || parts.length) this.head.meta.textContent = parts.join(" · ");
  }

  /** Called every second: the running time of a live execution. */
  tick() {
    if (!this.ended && this.startedAt && this.record?.status === "running") {
      this.head.meta.textContent = `${duration(Date.now() - this.startedAt)} so far`;
    }
  }

  connect() {
    const after = this.lastId ? `after=${this.lastId}` : "";
    if (getKey() && !this.eventsUrl) return this.connectFetch(after);
    const base = this.eventsUrl || `${executionPath(this.sid, this.eid)}/events`;
    const url = after ? `${base}${base.includes("?") ? "&" : "?"}${after}` : base;
    const es = new EventSource(url);
    this.es = es;
    es.onopen = () => {
      this.failures = 0;
      this.setConn("live");
    };
    es.onerror = () => {
      if (this.ended || es !== this.es) return;
      if (es.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself and sends Last-Event-ID: the gateway resumes there.
        this.reconnects++;
        this.setConn("reconnecting");
        return;
      }
      // The browser gave up (an HTTP error, or not an event stream): try again from our own
      // last id after a pause, unless the execution is gone.
      es.close();
      this.reconnects++;
      this.setConn("reconnecting");
      const delay = Math.min(10_000, 500 * 2 ** this.failures++);
      this.timer = setTimeout(() => this.retry(), delay);
    };
    for (const type of TYPES) es.addEventListener(type, (e) => this.receive(type, e));
  }

  /** The stream read with fetch, so it can carry the key; resumed from our last id. */
  async connectFetch(after) {
    const abort = new AbortController();
    this.abort = abort;
    const url = `${executionPath(this.sid, this.eid)}/events${after ? `?${after}` : ""}`;
    try {
      const res = await fetch(url, { headers: { Accept: "text/event-stream", ...authHeaders() },
        signal: abort.signal, cache: "no-store" });
      if (!res.ok || !(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
        throw new Error(`HTTP ${res.status}`);
      }
      this.failures = 0;
      this.setConn("live");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { type: "message", id: "", data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (event.data.length) {
              this.receive(event.type, { lastEventId: event.id, data: event.data.join("\n") });
            }
            event = { type: "message", id: event.id, data: [] };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? "" : line.slice(colon + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "event") event.type = v;
          else if (field === "data") event.data.push(v);
          else if (field === "id") event.id = v;
        }
        if (this.ended) break;
      }
    } catch {
      if (abort.signal.aborted) return;
    }
    if (this.ended || abort !== this.abort) return;
    // The stream ended or failed before the run did: again from our last id after a pause.
    this.reconnects++;
    this.setConn("reconnecting");
    const delay = Math.min(10_000, 500 * 2 ** this.failures++);
    this.timer = setTimeout(() => this.retry(), delay);
  }

  async retry() {
    if (this.ended) return;
    try {
      await api("GET", executionPath(this.sid, this.eid));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return this.fail(error.message);
      // A token that expired or whose key went: read on with the key, if the page has one.
      if (error instanceof ApiError && error.status === 401) return this.fail(error.message);
    }
    if (this.eventsUrl && getKey()) this.eventsUrl = null; // a token lasts minutes; the key stays
    if (!this.ended) this.connect();
  }

  setConn(state) {
    const c = this.head.conn;
    c.dataset.state = state;
    c.dataset.reconnects = String(this.reconnects);
    c.textContent = state === "reconnecting" ? `reconnecting (${this.reconnects})…` : state;
  }

  receive(type, e) {
    if (!TYPES.includes(type)) return;
    const id = Number(e.lastEventId);
    if (!Number.isInteger(id) || id <= this.lastId) return; // seen already (or no id at all)
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return;
    }
    if (data === null || typeof data !== "object") return;
    this.lastId = id;
    const text = typeof data.text === "string" ? data.text : "";
    switch (type) {
      case "stdout":
      case "stderr":
        this.out.push(type, text);
        break;
      case "install":
        this.installBox.hidden = false;
        this.install.push("install", text);
        break;
      case "app":
        this.appBox.hidden = false;
        this.app.push(data.stream === "stderr" ? "stderr" : "stdout", text);
        break;
      case "truncated":
        this.out.push("note", `\n[${data.message || "output truncated"}]\n`);
        break;
      case "ready":
        this.note(`The app answers on port ${data.port} (after ${duration(data.after_ms)}).`);
        break;
      case "report":
        this.report(data);
        break;
      case "exit":
      case "error":
        this.finish(type, data);
        break;
      default:
        break;
    }
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = 0;
    this.head.conn.dataset.lastId = String(this.lastId);
    const more = [this.out.flush(), this.install.flush(), this.app.flush()];
    if (more.some(Boolean)) {
      this.schedule();
    } else if (this.drained) {
      this.drained();
      this.drained = null;
    }
    if (this.install.lines) this.installCount.textContent = `(${this.install.lines} lines)`;
  }

  note(text, cls = "") {
    this.notes.append(el("li", { class: cls }, text));
  }

  report(r) {
    const n = (v) => (Number.isFinite(v) ? v : 0);
    // Null counts: the runner left nothing to parse (a compile error, a kill); say why.
    const counts = Number.isFinite(r.passed)
      ? `: ${n(r.passed)} passed, ${n(r.failed)} failed, ${n(r.skipped)} skipped, ${n(r.errors)} errors`
      : `: no results (${String(r.message || "nothing to parse")})`;
    const summary = el("p", { class: "report-summary" },
      el("b", {}, String(r.runner || "tests")),
      counts,
      Number.isFinite(r.duration_ms) ? ` in ${duration(r.duration_ms)}` : "");
    summary.classList.add(n(r.failed) + n(r.errors) || !Number.isFinite(r.passed) ? "bad" : "ok");
    const box = this.reportBox;
    box.replaceChildren(el("h3", {}, "Test report"), summary);
    box.hidden = false;
    if (!Array.isArray(r.cases)) {
      box.append(el("p", { class: "muted" }, "The runner reported no per-test results."));
      return;
    }
    const rows = r.cases.slice(0, MAX_CASES).map((c) => {
      const status = String(c?.status ?? "");
      const cls = status === "passed" ? "ok" : status === "skipped" ? "muted" : "bad";
      return el("tr", { class: `case ${cls}` },
        el("td", {}, el("span", { class: `badge ${cls}` }, status)),
        el("td", {}, String(c?.name ?? "")),
        el("td", { class: "muted" }, String(c?.suite ?? "")),
        el("td", { class: "num" }, Number.isFinite(c?.duration_ms) ? duration(c.duration_ms) : ""),
        el("td", {}, c?.message ? el("pre", { class: "message" }, String(c.message)) : ""));
    });
    box.append(el("table", { class: "cases" },
      el("thead", {}, el("tr", {}, ...["Status", "Test", "Suite", "Time", "Message"].map(
        (h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)));
    if (r.cases.length > MAX_CASES) {
      box.append(el("p", { class: "muted" }, `… and ${r.cases.length - MAX_CASES} more cases.`));
    }
  }

  finish(type, data) {
    this.ended = true;
    this.es?.close();
    this.abort?.abort();
    this.head.kill.disabled = true;
    // Said once the output before it is on screen (a flood takes a few frames to show).
    this.drained = () => this.showEnd(type, data);
  }

  showEnd(type, data) {
    this.setConn("ended");
    if (type === "error") {
      this.head.badge.className = "badge bad";
      this.head.badge.textContent = "failed";
      this.end.className = "run-end bad";
      this.end.textContent = `Error ${data.code}: ${data.message}`;
    } else {
      const x = { ...data, status: data.timed_out ? "timed_out" : "exited" };
      this.showStatus(x);
      const parts = [`Exited with code ${data.exit_code}`];
      if (data.signal) parts.push(`signal ${data.signal}`);
      if (data.oom_killed) parts.push("out of memory");
      if (data.timed_out) parts.push(data.idle ? "no output for too long" : "timed out");
      if (data.truncated) parts.push("output truncated");
      parts.push(`after ${duration(data.duration_ms)}`);
      this.end.className = `run-end ${outcome(x)[0]}`;
      this.end.textContent = `${parts.join(", ")}.`;
      if (Array.isArray(data.missing_modules) && data.missing_modules.length) {
        this.note(`Missing modules: ${data.missing_modules.join(", ")}`, "bad");
      }
      if (data.tests && !this.reportBox.childElementCount) {
        const t = data.tests;
        this.note(`Tests: ${t.passed} passed, ${t.failed} failed, ${t.skipped} skipped, ${t.errors} errors`);
      }
    }
    // The record says how it ended for people (killed, timed out) where the event cannot.
    this.load().finally(() => this.onEnd?.());
  }

  fail(message) {
    this.ended = true;
    this.es?.close();
    this.abort?.abort();
    clearTimeout(this.timer);
    this.head.kill.disabled = true;
    this.setConn("error");
    this.end.className = "run-end bad";
    this.end.textContent = message;
  }

  async kill() {
    this.head.kill.disabled = true;
    try {
      await api("POST", `${executionPath(this.sid, this.eid)}/kill`);
      this.note("Kill requested.");
    } catch (error) {
      if (error.code !== "not_running") this.note(`Kill failed: ${error.message}`, "bad");
    }
  }

  close() {
    this.ended = true;
    this.es?.close();
    this.abort?.abort();
    clearTimeout(this.timer);
    cancelAnimationFrame(this.frame);
  }
}
