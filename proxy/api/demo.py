"""A small demo upstream served by the same process under /demo, so the bundled example answers
out of the box. It behaves like a typical chat API: bearer auth, a JSON reply with the answer,
retrieval context and a trace."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.api.common import read_json_object

DEMO_TOKEN_HEADER = "authorization"


async def demo_chat(request: Request) -> JSONResponse:
    if not request.headers.get(DEMO_TOKEN_HEADER, "").startswith("Bearer "):
        return JSONResponse({"detail": "missing bearer token"}, status_code=401)
    body = await read_json_object(request)
    message = body.get("message")
    if not isinstance(message, str):
        return JSONResponse({"detail": "field 'message' (string) is required"}, status_code=422)
    answer = f"You said: {message}"
    return JSONResponse(
        {
            "response": answer,
            "sources": [f"doc://demo/{len(message) % 3}"],
            "trace": [{"name": "echo", "type": "TOOL", "inputData": {"message": message}, "outputData": answer}],
        }
    )


ROUTES = [Route("/demo/chat", demo_chat, methods=["POST"])]
