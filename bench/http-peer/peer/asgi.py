"""ASGI entry point: `daphne peer.asgi:application` with bench/http-peer on PYTHONPATH."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peer.settings")
application = get_asgi_application()
