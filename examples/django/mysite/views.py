"""Django views served through Switchyard's interface (``--http-route /django/=http.django``).

A Python worker runs Django's ASGI handler for each request: the request with
its whole body in, the response streamed back in 64 KiB pieces.
"""

import json

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from switchyard import Client

_client = None


def client() -> Client:
    """One Switchyard client per process (its REDIS_URL is the worker's)."""
    global _client
    if _client is None:
        _client = Client()
    return _client


def hello(request):
    name = request.GET.get("name", "world")
    return JsonResponse({"hello": name, "method": request.method, "path": request.path})


@csrf_exempt
def echo(request):
    """The request body back, with its length in a header."""
    response = HttpResponse(request.body, content_type=request.content_type or "application/octet-stream")
    response["x-body-length"] = str(len(request.body))
    return response


def stream(request):
    """``size`` bytes of a repeating pattern, produced in 10 KiB chunks (a streamed response)."""
    size = min(int(request.GET.get("size", "300000")), 50_000_000)
    pattern = b"0123456789abcdef" * 640

    async def chunks():
        left = size
        while left > 0:
            piece = pattern[: min(left, len(pattern))]
            left -= len(piece)
            yield piece

    return StreamingHttpResponse(chunks(), content_type="application/octet-stream")


@csrf_exempt
async def broadcast(request):
    """POST a text: every member of group ``chat`` gets it once (``Client.agroup_send``)."""
    if request.method != "POST":
        return JsonResponse({"error": "POST a text to broadcast"}, status=405)
    text = request.body.decode("utf-8")
    seq = await client().agroup_send("chat", json.dumps({"broadcast": text}, separators=(",", ":")))
    return JsonResponse({"seq": seq})


def fail(request):
    """A view that raises: the worker logs it and answers 500; the next request is served."""
    raise RuntimeError("this view fails on purpose")


