"""HTTP routes of the benchmark peer: only a readiness probe for the scripts to poll."""

from django.http import HttpResponse
from django.urls import path


def readyz(request):
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [path("readyz", readyz)]
