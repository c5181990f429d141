// The app's tests (node:test): they reach the running app at APP_URL (test mode sets it).
const test = require("node:test");
const assert = require("node:assert");

const URL = process.env.APP_URL || "http://127.0.0.1:3000";

test("health", async () => {
  const res = await fetch(`${URL}/`);
  assert.strictEqual(res.status, 200);
  assert.deepStrictEqual(await res.json(), { status: "ok" });
});

test("add", async () => {
  const res = await fetch(`${URL}/add?a=2&b=3`);
  assert.deepStrictEqual(await res.json(), { sum: 5 });
});

test("add refuses words", async () => {
  const res = await fetch(`${URL}/add?a=two&b=3`);
  assert.strictEqual(res.status, 400);
});
