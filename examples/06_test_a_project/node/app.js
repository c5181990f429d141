// A small web app: GET / answers {"status":"ok"}, GET /add?a=1&b=2 answers {"sum":3}.
// Test mode starts it with PORT set to the `app.port` of the request.
const http = require("node:http");

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  const send = (status, body) => {
    res.writeHead(status, { "Content-Type": "application/json" });
    res.end(JSON.stringify(body));
    console.log(`${req.method} ${req.url} -> ${status}`);
  };
  if (url.pathname === "/") return send(200, { status: "ok" });
  if (url.pathname === "/add") {
    const a = Number.parseInt(url.searchParams.get("a"), 10);
    const b = Number.parseInt(url.searchParams.get("b"), 10);
    if (Number.isNaN(a) || Number.isNaN(b)) return send(400, { error: "a and b must be integers" });
    return send(200, { sum: a + b });
  }
  return send(404, { error: "not found" });
});

const port = Number(process.env.PORT || 3000);
server.listen(port, "127.0.0.1", () => console.log(`listening on port ${port}`));
