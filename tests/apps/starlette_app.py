"""A plain Starlette app: path parameters, JSON, a request body and a middleware."""

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def homepage(request: Request) -> Response:
    """Return a fixed text."""
    return PlainTextResponse("starlette home")


async def user(request: Request) -> Response:
    """Return the path parameter and the query parameters."""
    return JSONResponse({"name": request.path_params["name"], "query": dict(request.query_params)})


async def echo_json(request: Request) -> Response:
    """Return the JSON body with the number of keys."""
    data = await request.json()
    return JSONResponse({"received": data, "keys": len(data)})


class TagMiddleware(BaseHTTPMiddleware):
    """Add `x-starlette-middleware` to every response."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-starlette-middleware"] = "yes"
        return response


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/users/{name}", user),
        Route("/echo", echo_json, methods=["POST"]),
    ],
    middleware=[Middleware(TagMiddleware)],
)
