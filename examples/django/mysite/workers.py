"""What the Python workers serve: ``python -m switchyard runworker mysite.workers:APPS``.

Channel ``chat`` (interface: ``--route /ws/chat/=chat``) is the chat counter
consumer; channel ``http.django`` (``--http-route /django/=http.django``) is
Django itself, through its ASGI handler.
"""

from chat.consumers import ChatCounterConsumer
from mysite.asgi import application

APPS = {
    "chat": ChatCounterConsumer,
    "http.django": application,
}
