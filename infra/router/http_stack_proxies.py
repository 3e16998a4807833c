"""Bare streaming pass-through proxies on candidate HTTP stacks, for choosing the router's.

    python infra/router/http_stack_proxies.py aiohttp PORT UPSTREAM_URL
    .venv-bench/bin/python infra/router/http_stack_proxies.py starlette PORT UPSTREAM_URL

Each forwards POST /v1/completions to UPSTREAM_URL and relays the body chunk by
chunk, with no routing logic: the HTTP stack's own cost. Driven by
``infra/router/http_stack_bench.py``; results in docs/router-http-stack.md.
"""

from __future__ import annotations

import sys


def aiohttp_proxy(port: int, upstream: str) -> None:
    from aiohttp import ClientSession, TCPConnector, web

    async def start(app: web.Application) -> None:
        app["s"] = ClientSession(connector=TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["s"].post(upstream + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"}) as up:
            resp = web.StreamResponse(status=up.status,
                                      headers={"Content-Type": up.headers["Content-Type"]})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/v1/completions", handle)
    app.router.add_get("/health", health)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def starlette_proxy(port: int, upstream: str) -> None:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None,
                                                                max_keepalive_connections=512))

    async def handle(request):
        body = await request.body()
        req = client.build_request("POST", upstream + "/v1/completions", content=body,
                                   headers={"Content-Type": "application/json"})
        up = await client.send(req, stream=True)

        async def relay():
            try:
                async for chunk in up.aiter_raw():
                    yield chunk
            finally:
                await up.aclose()

        return StreamingResponse(relay(), status_code=up.status_code,
                                 media_type=up.headers.get("content-type"))

    async def health(_):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/completions", handle, methods=["POST"]),
                            Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


if __name__ == "__main__":
    stack, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    {"aiohttp": aiohttp_proxy, "starlette": starlette_proxy}[stack](port, upstream)
