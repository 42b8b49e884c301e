"""ASGI entry point (`runportal` serves it with uvicorn).

API-key prediction calls are answered on the event loop (deployments_app/predict/aio.py);
every other request goes to Django's WSGI application, run in a thread pool by a2wsgi so
that slow pages and uploads do not wait for each other (Django's own ASGI handler runs all
synchronous views of a process on one thread).
"""

import os

from a2wsgi import WSGIMiddleware
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
_django = get_wsgi_application()

from django.conf import settings  # noqa: E402 - after setup

from deployments_app.predict.aio import wrap  # noqa: E402 - needs the app registry

application = wrap(WSGIMiddleware(_django, workers=settings.PORTAL_WEB_THREADS))
