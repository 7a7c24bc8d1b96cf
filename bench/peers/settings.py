"""Django settings for the benchmark peers: the smallest project that runs the chat counter.

Why it exists: Switchyard is benchmarked against Django Channels served by Daphne and by
uvicorn; this project is that peer. No database, no middleware beyond the defaults that an
ASGI WebSocket route needs, quiet logging (log output would cost CPU that the benchmark
attributes to the server).
"""

import os

BASE_DIR = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "benchmark-peer-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
MIDDLEWARE = []
ROOT_URLCONF = "urls"
ASGI_APPLICATION = "asgi.application"
DATABASES = {}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # The benchmark's own redis-server (never the default port 6379). redis-py 6+
            # caps a pool at 100 connections and then raises MaxConnectionsError instead of
            # waiting; channels_redis takes one per in-flight group_add/discard/send, so
            # 1,000 clients connecting at once exceed it. Raise the cap like a real deployment.
            # redis-py 8 also defaults socket_timeout to 5 s, the same as channels_redis'
            # BZPOPMIN timeout, so idle receives randomly fail with "Timeout reading" and the
            # consumer dies (close 1011); give the socket more time than the blocking pop.
            "hosts": [
                {
                    "address": os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6390/0"),
                    "max_connections": int(os.environ.get("PEERS_REDIS_MAX_CONNECTIONS", "4000")),
                    "socket_timeout": 15,
                }
            ],
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
