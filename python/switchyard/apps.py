"""What a Python worker serves: ``module:APPS``, a mapping channel → consumer.

``APPS`` maps each channel name to what serves it:

- a subclass of :class:`switchyard.AsyncWebsocketConsumer` — a WebSocket
  channel (route it with the interface's ``--route /ws/chat/=chat``);
- anything else callable — an ASGI application for an HTTP channel (Django's
  ``get_asgi_application()``, a Starlette app; ``--http-route /app/=http.app``).

``--only-channels`` / ``--exclude-channels`` then pick which of them a given
process serves, so each channel can have its own worker count, as with the
Rust worker.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from .consumer import AsyncWebsocketConsumer


@dataclass(frozen=True)
class Target:
    """What serves one channel."""

    app: Any
    is_http: bool

    @property
    def kind(self) -> str:
        return "http" if self.is_http else "websocket"


class AppsError(ValueError):
    """APPS cannot be loaded or makes no sense; the message says what to fix."""


def load(spec: str) -> dict[str, Target]:
    """Imports ``module:ATTRIBUTE`` and checks that it maps channels to consumers."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AppsError(f"APPS: `{spec}` must be `module:ATTRIBUTE`, e.g. `chat.workers:APPS`")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` and Django's manage.py do
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AppsError(f"APPS: cannot import `{module_name}`: {error}") from error
    value = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise AppsError(f"APPS: `{module_name}` has no `{attribute}`") from None
    return targets(value, spec)


def targets(value: Any, spec: str = "APPS") -> dict[str, Target]:
    if not isinstance(value, Mapping) or not value:
        raise AppsError(f"APPS: `{spec}` must be a non-empty dict of channel → consumer class or ASGI app")
    out = {}
    for channel, app in value.items():
        if not isinstance(channel, str) or not channel or any(c in channel for c in "{} "):
            raise AppsError(f"APPS: channel name {channel!r} must be a non-empty string without braces or spaces")
        if inspect.isclass(app) and issubclass(app, AsyncWebsocketConsumer):
            out[channel] = Target(app, is_http=False)
        elif inspect.isclass(app):
            raise AppsError(
                f"APPS: {channel!r} → {app.__name__} is a class but not an AsyncWebsocketConsumer; "
                "an ASGI app is an instance or a function"
            )
        elif callable(app):
            out[channel] = Target(app, is_http=True)
        else:
            raise AppsError(f"APPS: {channel!r} → {app!r} is neither an AsyncWebsocketConsumer nor an ASGI app")
    return out


def check_globs(flag: str, patterns: list[str]) -> None:
    for pattern in patterns:
        depth = 0
        for char in pattern:
            if char == "[":
                depth += 1
            elif char == "]" and depth:
                depth -= 1
        if depth or not pattern:
            raise AppsError(f"{flag}: `{pattern}` is not a valid glob")


def select(apps: dict[str, Target], only: list[str], exclude: list[str]) -> dict[str, Target]:
    """The channels this process serves, after the globs."""
    return {
        channel: target
        for channel, target in apps.items()
        if (not only or any(fnmatch.fnmatchcase(channel, p) for p in only))
        and not any(fnmatch.fnmatchcase(channel, p) for p in exclude)
    }
