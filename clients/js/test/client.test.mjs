// The JavaScript client against a real gateway (PETRI_URL; tests/integration/test_js_client.py
// starts one and runs `node --test` here): create, files, runs, streams, and resume after a
// connection cut mid-run by a proxy.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";

import {
  Client, Conflict, FileNotFound, GatewayUnavailable, InstallFailed, InvalidRequest, Sandbox,
  SandboxNotFound, parseEvent, readSSE,
} from "../src/index.js";

const URL = process.env.PETRI_URL;
const TICKS = "import time\nfor i in range(8):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.15)\n";
const TICKS_OUT = Array.from({ length: 8 }, (_, i) => `tick ${i}\n`).join("");

let sb;
before(async () => {
  assert.ok(URL, "PETRI_URL must name a running gateway");
  sb = await Sandbox.create("python", { url: URL });
});
after(async () => {
  await sb?.delete();
});

test("files: write, read, list, remove", async () => {
  assert.deepEqual(await sb.files.write("dir/a.txt", "héllo"), { path: "dir/a.txt", size: 6 });
  await sb.files.write("/sandbox/dir/b.bin", new Uint8Array([0, 255]));
  assert.equal(await sb.files.read("./dir/a.txt"), "héllo");
  assert.deepEqual([...(await sb.files.readBytes("dir/b.bin"))], [0, 255]);
  assert.deepEqual((await sb.files.list("dir")).map((f) => f.path), ["dir/a.txt", "dir/b.bin"]);
  await sb.files.remove("dir/b.bin");
  await assert.rejects(sb.files.read("dir/b.bin"), FileNotFound);
});

test("runs: output live through callbacks, non-zero exit as data", async () => {
  const seen = [];
  const code = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.2)\nprint('second')\n"
    + "print('oops', file=sys.stderr)\nsys.exit(3)\n";
  const ex = await sb.runCode(code, {
    onStdout: (t) => seen.push(["out", t, Date.now()]),
    onStderr: (t) => seen.push(["err", t, Date.now()]),
  });
  const done = Date.now();
  assert.equal(ex.exitCode, 3);
  assert.equal(ex.status, "exited");
  assert.equal(ex.ok, false);
  assert.equal(ex.stdout, "first\nsecond\n");
  assert.equal(ex.stderr, "oops\n");
  assert.ok(seen[0][1].startsWith("first") && done - seen[0][2] > 900, "not live");
  const cmd = await sb.runCommand('echo "$1|$2|$X"; cat', {
    args: ["a b", 2], env: { X: "y" }, stdin: "in",
  });
  assert.equal(cmd.stdout, "a b|2|y\nin");
  await sb.files.write("main.py", "import sys\nprint(sys.argv[1:])\n");
  assert.equal((await sb.runFile("main.py", { args: ["x"] })).stdout, "['x']\n");
  const slow = await sb.runCommand("sleep 5", { timeout: 1 });
  assert.equal(slow.timedOut, true);
  assert.equal(slow.status, "timed_out");
});

test("stream: typed events until the terminal one, replay after an id, kill", async () => {
  const events = [];
  for await (const e of sb.stream({ code: TICKS })) events.push(e);
  assert.deepEqual(events.map((e) => e.id), events.map((_, i) => i + 1));
  assert.equal(events[0].type, "start");
  assert.equal(events.at(-1).type, "exit");
  assert.equal(events.filter((e) => e.type === "stdout").map((e) => e.data.text).join(""), TICKS_OUT);
  const replay = [];
  for await (const e of sb.stream({ executionId: events[0].data.execution_id, after: 4 })) {
    replay.push(e.id);
  }
  assert.deepEqual(replay, events.slice(4).map((e) => e.id));

  let eid;
  let end;
  for await (const e of sb.stream({ command: "echo up; sleep 60" })) {
    if (e.type === "start") eid = e.data.execution_id;
    if (e.type === "stdout") await sb.kill(eid);
    end = e;
  }
  assert.equal(end.type, "exit");
  assert.equal(end.data.killed, true);
  await assert.rejects(sb.kill(eid), Conflict);
  assert.equal((await sb.executions())[0].id, eid);
});

test("runTests: the parsed report, and an app under test", async () => {
  await sb.files.write("conftest.py", "");
  await sb.files.write("tests/test_js.py", "def test_one():\n    assert True\n\ndef test_two():\n    assert 1 == 2\n");
  const ex = await sb.runTests("tests/test_js.py");
  assert.equal(ex.exitCode, 1);
  assert.equal(ex.ok, false);
  assert.equal(ex.tests.runner, "pytest");
  assert.deepEqual([ex.tests.passed, ex.tests.failed], [1, 1]);
  const withApp = await sb.runTests("tests/test_js.py", {
    app: { command: "echo app up; python3 -m http.server 5000", port: 5000, readyPath: "/" },
  });
  assert.match(withApp.appOutput, /app up/);
  assert.deepEqual([withApp.tests.passed, withApp.tests.failed], [1, 1]);
  await sb.files.remove("tests");
});

test("errors are typed", async () => {
  await assert.rejects(Sandbox.create("cobol", { url: URL }), InvalidRequest);
  await assert.rejects(Sandbox.connect("sb-0000000000000000", { url: URL }), SandboxNotFound);
  const down = new Client({ url: "http://127.0.0.1:9" });
  await assert.rejects(Sandbox.create("python", { client: down }), (err) => {
    assert.ok(err instanceof GatewayUnavailable);
    assert.match(err.message, /is it running\?/);
    return true;
  });
  await Sandbox.use("python", { url: URL, env: { PIP_INDEX_URL: "http://127.0.0.1:9/simple",
    PIP_RETRIES: "0" } }, async (box) => {
    await box.files.write("requirements.txt", "petri-no-such-package==1.0\n");
    const install = [];
    await assert.rejects(box.runCode("print(1)", { onInstall: (t) => install.push(t) }), (err) => {
      assert.ok(err instanceof InstallFailed);
      assert.match(err.execution.install, /petri-no-such-package/);
      return true;
    });
    assert.ok(install.length > 0);
  });
});

test("connect, list, getInfo, use", async () => {
  const again = await Sandbox.connect(sb.id, { url: URL });
  assert.equal((await again.getInfo()).id, sb.id);
  assert.ok((await Sandbox.list({ url: URL })).some((s) => s.id === sb.id));
  let inside;
  const answer = await Sandbox.use("node", { url: URL }, async (box) => {
    inside = box.id;
    return (await box.runCode("console.log(6 * 7)")).stdout;
  });
  assert.equal(answer, "42\n");
  await assert.rejects(Sandbox.connect(inside, { url: URL }), SandboxNotFound);
});

// A proxy that cuts the first exec connection after `count` stdout events went through.
function droppingProxy(target, count) {
  const seen = { cuts: 0, requests: [] };
  let armed = true;
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.hostname);
    let cutThis = false;
    let received = "";
    client.on("data", (data) => {
      const head = data.toString("latin1");
      for (const m of head.matchAll(/^(GET|POST|PUT|DELETE) [^\r\n]*\r\n(?:[^\r\n]+\r\n)*/gm)) {
        seen.requests.push(m[0]);
        if (armed && /^POST \/v1\/sandboxes\/[^/ ]+\/exec /.test(m[0])) {
          armed = false;
          cutThis = true;
        }
      }
      upstream.write(data);
    });
    upstream.on("data", (data) => {
      if (!cutThis) return client.write(data);
      received += data.toString("latin1");
      const n = received.split("\nevent: stdout\n").length - 1;
      if (n < count) return client.write(data);
      seen.cuts += 1;
      client.write(data.subarray(0, Math.max(0, data.length - 5))); // a partial event
      client.destroy();
      upstream.destroy();
    });
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    resolve({ url: `http://127.0.0.1:${server.address().port}`, seen, close: () => server.close() });
  }));
}

test("a stream cut mid-run resumes with Last-Event-ID: no gap, no duplicate", async () => {
  const proxy = await droppingProxy(new globalThis.URL(URL), 3);
  try {
    const box = await Sandbox.connect(sb.id, { url: proxy.url });
    const events = [];
    for await (const e of box.stream({ code: TICKS })) events.push(e);
    assert.equal(proxy.seen.cuts, 1);
    assert.deepEqual(events.map((e) => e.id), events.map((_, i) => i + 1));
    assert.equal(events.filter((e) => e.type === "stdout").map((e) => e.data.text).join(""), TICKS_OUT);
    const resumed = proxy.seen.requests.filter((r) => r.includes("/events"));
    assert.equal(resumed.length, 1);
    assert.match(resumed[0], /last-event-id: [1-9]/i);
    const chunks = [];
    const ex = await box.runCode(TICKS, { onStdout: (t) => chunks.push(t) });
    assert.equal(ex.stdout, TICKS_OUT);
    assert.equal(chunks.join(""), TICKS_OUT);
  } finally {
    proxy.close();
  }
});

test("the SSE reader: keep-alives are never events; bad data is skipped", async () => {
  const wire = ": keep-alive\nid: 1\nevent: start\ndata: {\"execution_id\":\"ex\"}\n\n"
    + ": ping\n\n\nid: 2\r\nevent: future\r\ndata: {}\r\n\r\n"
    + "id: 3\nevent: stdout\ndata: not json\n\nid: 4\nevent: stdout\ndata: {\"text\":\"a\"}\n\n";
  const body = new Blob([wire]).stream();
  const raw = [];
  for await (const r of readSSE(body)) raw.push(r);
  assert.deepEqual(raw.map((r) => [r.id, r.type]), [["1", "start"], ["2", "future"], ["3", "stdout"], ["4", "stdout"]]);
  const typed = raw.map((r) => parseEvent(r)).filter(Boolean);
  assert.deepEqual(typed.map((e) => [e.id, e.type]), [[1, "start"], [4, "stdout"]]);
  assert.equal(parseEvent({ id: "4", type: "stdout", data: "{}" }, 4), null);
});
