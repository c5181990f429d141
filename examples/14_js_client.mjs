// The JavaScript client (clients/js): a sandbox, a file, a run with live output, a stream.
//   PETRI_URL=http://127.0.0.1:8000 node examples/14_js_client.mjs
import { Sandbox } from "../clients/js/src/index.js";

const result = await Sandbox.use("python", {}, async (sb) => {
  await sb.files.write("main.py", "import sys\nprint('hi', sys.argv[1])\n");
  const ex = await sb.runFile("main.py", { args: ["from js"], onStdout: (t) => process.stdout.write(t) });
  const types = [];
  for await (const event of sb.stream({ command: "echo streamed; exit 5" })) types.push(event.type);
  console.log("events:", types.join(" "));
  return ex;
});
if (result.exitCode !== 0 || result.stdout !== "hi from js\n") process.exit(1);
