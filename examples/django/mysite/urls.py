from django.urls import path

from . import views

urlpatterns = [
    path("django/hello/", views.hello),
    path("django/echo/", views.echo),
    path("django/stream/", views.stream),
    path("django/broadcast/", views.broadcast),
    path("django/fail/", views.fail),
]
