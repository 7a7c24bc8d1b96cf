"""ASGI entry point of the benchmark peer (`daphne asgi:application`, `uvicorn asgi:application`).

Routes /ws/chat/ to the chat counter, /ws/rooms/ to the rooms consumer and everything else to
Django's HTTP handler.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_http = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from consumers import ChatCounterConsumer, RoomsConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_http,
        "websocket": URLRouter(
            [
                path("ws/chat/", ChatCounterConsumer.as_asgi()),
                path("ws/rooms/", RoomsConsumer.as_asgi()),
            ]
        ),
    }
)
