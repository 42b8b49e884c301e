"""WSGI entry point (`gunicorn portal.wsgi`): Django alone.

Every request goes through Django, prediction calls included (the views run the same
pipeline with its blocking driver). `runportal` serves `portal.asgi` instead, whose lane
answers API-key prediction calls on the event loop.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()
