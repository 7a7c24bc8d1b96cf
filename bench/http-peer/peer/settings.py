"""Minimal Django settings for the HTTP benchmark peer: no database, no middleware,
so the figure measures the server and the framework, not an app."""

SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "peer.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
