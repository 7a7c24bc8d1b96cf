"""Switchyard's Python workers: Channels-style consumers and ASGI apps on Redis streams.

``switchyard.AsyncWebsocketConsumer`` is Channels' consumer API for a WebSocket
channel; any ASGI application (Django, Starlette) serves an HTTP channel;
``python -m switchyard runworker module:APPS`` runs them, side by side with
Rust workers if wanted; ``switchyard.Client`` sends to groups from anywhere.
See docs/python.md in the Switchyard repository.
"""

__version__ = "0.1.0"

from .client import Client  # noqa: E402
from .consumer import AsyncWebsocketConsumer  # noqa: E402
from .session import Session  # noqa: E402

__all__ = ["AsyncWebsocketConsumer", "Client", "Session", "__version__"]
