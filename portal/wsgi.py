"""WSGI entry point (gunicorn portal.wsgi).

API-key prediction calls take the fast lane in deployments_app/predict/fastpath.py; every
other request goes through Django as usual.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
_django = get_wsgi_application()

from deployments_app.predict.fastpath import wrap  # noqa: E402 - needs the app registry

application = wrap(_django)
