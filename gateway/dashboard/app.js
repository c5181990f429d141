// The Petri dashboard: sandboxes, their executions and files, a run box and live output.
// Plain ES modules, no build step; served by the gateway at `/` (same origin, so no CORS).
import {
  api, authHeaders, filePath, getKey, onReachability, onUnauthorized, sandboxPath, servicePath,
  setKey,
} from "./api.js";
import { $, ago, bytes, commandOf, duration, el, outcome, ttl } from "./dom.js";
import { RunView } from "./output.js";

const POLL_MS = 5000;
const MAX_FILES = 1000;
const EXAMPLES = {
  python: 'import time\n\nfor i in range(5):\n    print("tick", i)\n    time.sleep(0.5)\n',
  node: 'let i = 0;\nconst timer = setInterval(() => {\n  console.log("tick", i);\n  if (++i === 5) clearInterval(timer);\n}, 500);\n',
  go: 'package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n\tfor i := 0; i < 5; i++ {\n\t\tfmt.Println("tick", i)\n\t\ttime.Sleep(500 * time.Millisecond)\n\t}\n}\n',
  java: 'public class Main {\n    public static void main(String[] args) throws Exception {\n        for (int i = 0; i < 5; i++) {\n            System.out.println("tick " + i);\n            Thread.sleep(500);\n        }\n    }\n}\n',
  command: "ls -la /sandbox",
};

const state = {
  sandboxes: new Map(), // id -> sandbox, from the (TTL-neutral) list endpoint
  loaded: false,
  sid: null,
  eid: null,
  view: null, // the RunView on screen
  seen: undefined, // the selected sandbox's last_active_at when we last read its details
  eventsUrls: new Map(), // execution id -> the events_url (with its token) its 202 gave
  servicePolls: 0, // refreshes left while a service of the selected sandbox is starting
};
const LIVE = new Set(["starting", "ready"]);

// --- errors and the gateway's reachability ---------------------------------------------------

function showError(message) {
  const dismiss = el("button", { type: "button", class: "small" }, "Dismiss");
  dismiss.addEventListener("click", () => { $("error").hidden = true; });
  $("error").replaceChildren(el("span", {}, message), dismiss);
  $("error").hidden = false;
}

onReachability((ok, error) => {
  const pill = $("gateway-state");
  pill.dataset.state = ok ? "connected" : "offline";
  pill.textContent = ok ? "connected" : "offline";
  $("offline").hidden = ok;
  if (!ok) {
    $("offline").textContent = `Cannot reach the gateway at ${location.origin}: ${error.message} `
      + `Retrying every ${POLL_MS / 1000} s.`;
  }
});

/** Run an action; show its error under the header. */
async function attempt(what, fn) {
  try {
    return await fn();
  } catch (error) {
    if (error.code !== "unreachable") showError(`${what} failed: ${error.message}`);
    else showError(`${what} failed: the gateway does not answer.`);
    return undefined;
  }
}

// --- the API key (a gateway with keys answers 401 without one) --------------------------------

function showKeyForm(message) {
  const form = $("key-form");
  $("key-status").textContent = getKey() ? `The key was refused: ${message}` : "";
  if (form.hidden) {
    form.hidden = false;
    $("api-key").focus();
  }
}

onUnauthorized((error) => showKeyForm(error.message));

function renderKeyButton() {
  $("forget-key").hidden = !getKey();
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  setKey(key);
  $("api-key").value = "";
  $("key-status").textContent = "Checking…";
  renderKeyButton();
  try {
    await refreshSandboxes();
  } catch {
    return; // a 401 shows the form again with why
  }
  $("key-form").hidden = true;
  $("key-status").textContent = "";
  $("error").hidden = true;
  reopen();
}

function forgetKey() {
  setKey("");
  renderKeyButton();
  state.sandboxes = new Map();
  state.eventsUrls.clear();
  renderSandboxes();
  location.hash = "#/";
  refreshSandboxes().catch(() => {});
}

/** Read the selected sandbox and execution again (after a key was given). */
function reopen() {
  state.view?.close();
  state.view = null;
  if (state.sid) loadDetails().catch(() => {});
  route();
}

// --- sandboxes -------------------------------------------------------------------------------

async function refreshSandboxes() {
  const all = [];
  let after = "";
  for (let page = 0; page < 20; page++) {
    const q = after ? `&after=${encodeURIComponent(after)}` : "";
    const r = await api("GET", `/v1/sandboxes?limit=500${q}`);
    all.push(...r.sandboxes);
    if (!r.next) break;
    after = r.next;
  }
  state.sandboxes = new Map(all.map((s) => [s.id, s]));
  state.loaded = true;
  renderSandboxes();
  const sb = state.sandboxes.get(state.sid);
  if (!sb) return;
  // Reading a sandbox's executions or files renews its TTL, so they are read only when the
  // sandbox was used since we last read them (by us or an agent): a dashboard left open must
  // not keep sandboxes alive. The list read here renews nothing.
  if (state.seen === null) {
    state.seen = sb.last_active_at;
  } else if (state.seen !== undefined && sb.last_active_at !== state.seen) {
    await loadDetails();
  }
}

function renderSandboxes() {
  const list = $("sandbox-list");
  const sorted = [...state.sandboxes.values()].sort((a, b) =>
    b.created_at.localeCompare(a.created_at));
  const existing = new Map([...list.children].map((li) => [li.dataset.id, li]));
  for (const [i, sb] of sorted.entries()) {
    let li = existing.get(sb.id);
    existing.delete(sb.id);
    if (!li) {
      li = el("li", { "data-id": sb.id },
        el("a", { href: `#/sandboxes/${encodeURIComponent(sb.id)}`, class: "sb-link" },
          el("span", { class: "sb-id" }, sb.id),
          el("span", { class: "sb-meta" },
            el("span", { class: "tag" }, sb.language),
            el("span", { class: "dot" }),
            el("span", { class: "ttl", "data-expires": sb.expires_at }))));
    }
    li.querySelector(".ttl").dataset.expires = sb.expires_at;
    li.querySelector(".dot").className = `dot ${sb.status}`;
    li.querySelector(".dot").title = sb.status;
    markCurrent(li.querySelector("a"), sb.id === state.sid);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  }
  for (const li of existing.values()) li.remove();
  $("no-sandboxes").hidden = sorted.length > 0;
  renderSandboxHead();
  tickTtl();
}

function markCurrent(link, yes) {
  if (yes) link.setAttribute("aria-current", "true");
  else link.removeAttribute("aria-current");
}

function renderSandboxHead() {
  const sb = state.sandboxes.get(state.sid);
  if (!state.sid) return;
  $("sandbox-title").textContent = state.sid;
  $("run").disabled = !sb;
  if (!sb) {
    if (state.loaded) {
      $("sandbox-status").className = "badge bad";
      $("sandbox-status").textContent = "gone";
      $("sandbox-ttl").dataset.expires = "";
      $("sandbox-ttl").textContent = "—";
    }
    return;
  }
  $("sandbox-lang").textContent = sb.language;
  $("sandbox-status").className = `badge ${sb.status === "running" ? "ok" : "muted"}`;
  $("sandbox-status").textContent = sb.status;
  $("sandbox-ttl").dataset.expires = sb.expires_at;
}

function tickTtl() {
  for (const node of document.querySelectorAll("[data-expires]")) {
    if (!node.dataset.expires) continue;
    node.textContent = ttl(Math.round((Date.parse(node.dataset.expires) - Date.now()) / 1000));
  }
}

async function createSandbox(event) {
  event.preventDefault();
  const button = $("create");
  button.disabled = true;
  button.textContent = "Creating…";
  const sb = await attempt("Creating a sandbox", () =>
    api("POST", "/v1/sandboxes", { json: { language: $("language").value } }));
  button.disabled = false;
  button.textContent = "New sandbox";
  if (!sb) return;
  state.sandboxes.set(sb.id, sb);
  location.hash = `#/sandboxes/${encodeURIComponent(sb.id)}`;
  renderSandboxes();
}

let deleteArmed = 0;
async function deleteSandbox() {
  const button = $("delete");
  if (!deleteArmed) { // two presses, so a stray click deletes nothing
    button.textContent = "Really delete?";
    deleteArmed = setTimeout(() => { deleteArmed = 0; button.textContent = "Delete"; }, 4000);
    return;
  }
  clearTimeout(deleteArmed);
  deleteArmed = 0;
  button.textContent = "Delete";
  const sid = state.sid;
  const done = await attempt("Deleting the sandbox", async () => {
    await api("DELETE", sandboxPath(sid));
    return true;
  });
  if (!done) return;
  state.sandboxes.delete(sid);
  location.hash = "#/";
  renderSandboxes();
}

// --- one sandbox: executions, files, the run box ---------------------------------------------

async function loadDetails() {
  state.seen = null; // the next list read records last_active_at after these reads
  const sid = state.sid;
  await Promise.all([refreshExecutions(sid), refreshFiles(sid), refreshServices(sid)]);
}

// --- services (serve mode): a long-running process and its preview link ----------------------

async function refreshServices(sid = state.sid) {
  let r;
  try {
    r = await api("GET", servicePath(sid));
  } catch (error) {
    if (sid === state.sid && error.status === 404) renderServices(sid, []);
    return;
  }
  if (sid !== state.sid) return;
  renderServices(sid, r.services);
  // While one is starting, look again each second (a minute at most) to show it ready.
  if (r.services.some((x) => x.status === "starting") && state.servicePolls > 0) {
    state.servicePolls--;
    setTimeout(() => refreshServices(sid), 1000);
  }
}

/** Only an http(s) URL becomes a link: the API's text is never trusted as a scheme. */
function safeUrl(url) {
  try {
    const u = new URL(String(url), location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

function renderServices(sid, services) {
  const rows = services.map((sv) => {
    const live = LIVE.has(sv.status);
    const cls = sv.status === "ready" ? "ok" : sv.status === "starting" ? "running" : "muted";
    const href = `#/sandboxes/${encodeURIComponent(sid)}/executions/${encodeURIComponent(sv.execution_id)}`;
    const url = live ? safeUrl(sv.preview_url) : null;
    const stop = el("button", { type: "button", class: "small danger stop", hidden: !live }, "Stop");
    stop.addEventListener("click", () => stopService(sid, sv.id, stop));
    return el("li", { "data-id": sv.id, "data-status": sv.status },
      el("a", { href, class: "service-link", title: `${sv.id}: follow its output`,
        "aria-current": sv.execution_id === state.eid ? "true" : null },
        el("span", { class: `badge ${cls}` }, String(sv.status)),
        el("code", { class: "command" }, String(sv.command)),
        el("span", { class: "muted" }, `:${sv.port}`)),
      el("span", { class: "service-actions" },
        url ? el("a", { href: url, class: "preview", target: "_blank",
          rel: "noopener noreferrer" }, "Open preview ↗") : "",
        stop));
  });
  $("services").replaceChildren(...rows);
  $("no-services").hidden = services.length > 0;
}

async function startService(event) {
  event.preventDefault();
  const sid = state.sid;
  const command = $("service-command").value.trim();
  const port = Number($("service-port").value);
  if (!sid || !command) return;
  $("service-start").disabled = true;
  const sv = await attempt("Starting the service", () =>
    api("POST", servicePath(sid), { json: { command, port } }));
  $("service-start").disabled = false;
  if (!sv) return;
  state.servicePolls = 60;
  location.hash = `#/sandboxes/${encodeURIComponent(sid)}/executions/${encodeURIComponent(sv.execution_id)}`;
  await refreshServices(sid);
  refreshExecutions(sid);
}

async function stopService(sid, svid, button) {
  button.disabled = true;
  await attempt("Stopping the service", () => api("DELETE", servicePath(sid, svid)));
  await refreshServices(sid);
}

/** With a key, a download is fetched with it (a plain link cannot send the header). */
async function downloadWithKey(event) {
  const link = event.target.closest("a[download]");
  if (!link || !getKey()) return;
  event.preventDefault();
  await attempt("Downloading", async () => {
    const res = await fetch(link.getAttribute("href"), { headers: authHeaders() });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: link.getAttribute("download") });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}

async function refreshExecutions(sid = state.sid) {
  let r;
  try {
    r = await api("GET", `${sandboxPath(sid)}/executions?limit=100`);
  } catch (error) {
    if (sid === state.sid && error.status === 404) renderExecutions([]);
    return;
  }
  if (sid === state.sid) renderExecutions(r.executions);
}

function renderExecutions(executions) {
  const rows = executions.map((x) => {
    const [cls, label] = outcome(x);
    const href = `#/sandboxes/${encodeURIComponent(x.sandbox_id)}/executions/${encodeURIComponent(x.id)}`;
    return el("li", { "data-id": x.id },
      el("a", { href, "aria-current": x.id === state.eid ? "true" : null, title: x.id },
        el("span", { class: `badge ${cls}` }, label),
        el("code", { class: "command" }, commandOf(x.argv)),
        el("span", { class: "x-meta muted" },
          x.exit_code !== null ? el("span", { title: "exit code" }, `exit ${x.exit_code}`) : "",
          x.duration_ms !== null ? el("span", {}, duration(x.duration_ms)) : "",
          x.test ? el("span", { class: "tag" }, "test") : "",
          el("time", { datetime: x.created_at, title: x.created_at }, ago(x.created_at)))));
  });
  $("executions").replaceChildren(...rows);
  $("no-executions").hidden = executions.length > 0;
}

async function refreshFiles(sid = state.sid) {
  let r;
  try {
    r = await api("GET", `${sandboxPath(sid)}/files`);
  } catch (error) {
    if (sid === state.sid && error.code !== "unreachable") $("files-status").textContent = error.message;
    return;
  }
  if (sid !== state.sid) return;
  // Hidden folders (.petri: code the dashboard ran, .deps: installed packages) stay out of view.
  const shown = r.files.filter((f) => !f.path.split("/").some((part) => part.startsWith(".")));
  shown.sort((a, b) => a.path.localeCompare(b.path));
  $("files").replaceChildren(...shown.slice(0, MAX_FILES).map((f) =>
    el("li", {},
      el("a", { href: filePath(sid, f.path), download: f.path.split("/").pop(),
        title: `Download ${f.path}` }, f.path),
      el("span", { class: "muted" }, bytes(f.size)))));
  const hidden = r.files.length - shown.length;
  $("files-status").textContent = [
    shown.length ? `${shown.length} files` : "No files yet.",
    shown.length > MAX_FILES ? `(first ${MAX_FILES} shown)` : "",
    hidden ? `${hidden} in hidden folders.` : "",
  ].filter(Boolean).join(" ");
}

async function upload(files) {
  const sid = state.sid;
  if (!sid || !files.length) return;
  const zips = [...files].filter((f) => f.name.toLowerCase().endsWith(".zip"));
  const plain = [...files].filter((f) => !zips.includes(f));
  $("files-status").textContent = "Uploading…";
  let count = 0;
  const done = await attempt("Uploading", async () => {
    for (const zip of zips) {
      const r = await api("POST", `${sandboxPath(sid)}/upload`,
        { body: zip, headers: { "Content-Type": "application/zip" } });
      count += r.files.length;
    }
    if (plain.length) {
      const form = new FormData();
      for (const f of plain) form.append("file", f, f.name);
      const r = await api("POST", `${sandboxPath(sid)}/files`, { body: form });
      count += r.files.length;
    }
    return true;
  });
  await refreshFiles(sid);
  $("files-status").textContent = done ? `Uploaded ${count} files.` : "Upload failed.";
}

function setupDropzone() {
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (e) => {
    upload(e.target.files);
    e.target.value = "";
  });
}

let example = "";
function fillExample() {
  const sb = state.sandboxes.get(state.sid);
  const mode = document.querySelector("input[name=mode]:checked").value;
  const next = mode === "command" ? EXAMPLES.command : EXAMPLES[sb?.language] || "";
  const source = $("source");
  if (source.value === "" || source.value === example) source.value = next;
  example = next;
  fitSource();
}

/** The run box grows with its text (6 to 18 rows), so short programs show whole. */
function fitSource() {
  const source = $("source");
  const lines = source.value.split("\n").length;
  source.rows = Math.min(18, Math.max(6, lines + 1));
}

async function run(event) {
  event.preventDefault();
  const sid = state.sid;
  const mode = document.querySelector("input[name=mode]:checked").value;
  const source = $("source").value;
  const test = $("test-mode").checked;
  const body = { wait: false };
  if (source.trim()) body[mode] = source;
  else if (!test) return showError("Write some code or a command first.");
  if (test) body.test = true;
  $("run").disabled = true;
  const r = await attempt("Starting the run", () =>
    api("POST", `${sandboxPath(sid)}/exec`, { json: body }));
  $("run").disabled = false;
  if (!r) return;
  if (r.events_url) state.eventsUrls.set(r.execution_id, r.events_url);
  location.hash = `#/sandboxes/${encodeURIComponent(sid)}/executions/${encodeURIComponent(r.execution_id)}`;
  refreshExecutions(sid);
}

// --- routing: #/sandboxes/{id} and #/sandboxes/{id}/executions/{eid} -------------------------

function parseHash() {
  const m = location.hash.match(/^#\/sandboxes\/([^/]+)(?:\/executions\/([^/]+))?\/?$/);
  try {
    return m ? { sid: decodeURIComponent(m[1]), eid: m[2] ? decodeURIComponent(m[2]) : null }
      : { sid: null, eid: null };
  } catch {
    return { sid: null, eid: null };
  }
}

function route() {
  const { sid, eid } = parseHash();
  if (sid !== state.sid) {
    state.sid = sid;
    state.seen = undefined;
    $("empty").hidden = Boolean(sid);
    $("sandbox-view").hidden = !sid;
    $("executions").replaceChildren();
    $("files").replaceChildren();
    $("files-status").textContent = "";
    $("services").replaceChildren();
    $("no-services").hidden = true;
    if (sid) {
      renderSandboxHead();
      fillExample();
      loadDetails().then(() => refreshSandboxes()).catch(() => {});
    }
    renderSandboxes();
  }
  if (eid !== state.eid || (eid && !state.view)) {
    state.view?.close();
    state.view = null;
    state.eid = eid;
    const root = $("run-view");
    root.hidden = !eid;
    if (eid && sid) {
      state.view = new RunView(root, sid, eid, {
        eventsUrl: getKey() ? state.eventsUrls.get(eid) : null,
        onEnd: () => loadDetails().then(() => refreshSandboxes()).catch(() => {}),
      });
    } else {
      root.replaceChildren();
    }
    for (const a of $("executions").querySelectorAll("a")) {
      markCurrent(a, a.closest("li").dataset.id === eid);
    }
    for (const a of $("services").querySelectorAll("a.service-link")) {
      markCurrent(a, a.getAttribute("href").endsWith(`/executions/${encodeURIComponent(eid)}`));
    }
  }
}

// --- start -----------------------------------------------------------------------------------

function start() {
  // The skip link focuses the run box itself: following "#source" would change the route.
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("source").focus();
  });
  $("create-form").addEventListener("submit", createSandbox);
  $("delete").addEventListener("click", deleteSandbox);
  $("run-form").addEventListener("submit", run);
  $("source").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $("run-form").requestSubmit();
    }
  });
  $("source").addEventListener("input", fitSource);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", fillExample);
  }
  $("refresh").addEventListener("click", () => state.sid && loadDetails());
  setupDropzone();
  $("files").addEventListener("click", downloadWithKey);
  $("service-form").addEventListener("submit", startService);
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  renderKeyButton();
  window.addEventListener("hashchange", route);
  route();
  refreshSandboxes().then(() => {
    fillExample();
    renderSandboxHead();
  }).catch(() => {});
  setInterval(() => refreshSandboxes().catch(() => {}), POLL_MS);
  setInterval(() => {
    tickTtl();
    state.view?.tick();
  }, 1000);
}

start();
