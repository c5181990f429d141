"""`python -m tests.faulty_gateway --port N`: `petri serve` with one extra route, `/v1/boom`,
whose handler raises a plain exception (a bug no handler knows). Tests use it to see how the
real server answers and logs an internal error; the gateway itself has no such hook."""

from __future__ import annotations

import sys

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import routes, server

SECRET = "boom-0f3c: a bug's own words"


async def boom(request: Request) -> Response:
    raise RuntimeError(SECRET)


if __name__ == "__main__":
    routes.ROUTES.append(Route("/v1/boom", boom, methods=["GET", "POST"]))
    sys.exit(server.serve(None, int(sys.argv[sys.argv.index("--port") + 1])))
