// DOM helpers. Text always goes in through textContent: nothing from the API or a program is
// ever parsed as HTML.

/** el("a", {href, class: "x"}, "text", child) — attributes and children, never markup. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
}

export function ttl(seconds) {
  if (seconds <= 0) return "expired";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${String(s).padStart(2, "0")}s` : `${s}s`;
}

export function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** What an execution's status badge says: [css class, label]. */
export function outcome(x) {
  if (x.status === "running") return ["running", "running"];
  if (x.oom_killed) return ["bad", "OOM"];
  if (x.status === "timed_out" || x.timed_out) return ["warn", "timed out"];
  if (x.status === "killed") return ["warn", "killed"];
  if (x.status === "failed") return ["bad", "failed"];
  if (x.status === "interrupted") return ["bad", "interrupted"];
  return x.exit_code === 0 ? ["ok", "exited"] : ["bad", "exited"];
}

/** The command an execution ran, for people: `bash -c X` is shown as X, and the file that
 * holds code sent with `"code"` (under .petri/code/) as "(code)". */
export function commandOf(argv) {
  if (!Array.isArray(argv)) return "";
  if (argv.length === 3 && argv[0].endsWith("bash") && argv[1] === "-c") return argv[2];
  return argv.map((a) => (/(^|\/)\.petri\/code\//.test(a) ? "(code)" : a)).join(" ");
}
