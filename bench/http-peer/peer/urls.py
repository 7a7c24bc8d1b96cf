"""The same endpoint as Switchyard's http.example app: GET /api/example/ → JSON."""

from django.http import JsonResponse
from django.urls import path


async def index(request):
    client = f"{request.META.get('REMOTE_ADDR', '')}:{request.META.get('REMOTE_PORT', '')}"
    return JsonResponse({"app": "http.example", "client": client})


urlpatterns = [path("api/example/", index)]
