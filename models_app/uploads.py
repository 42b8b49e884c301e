"""An upload handler that stops writing once a file passes the size limit.

Django streams large uploads to a temporary file; without a bound, a huge upload fills the
disk before any view code runs. This handler stops early and flags the request, and the view
answers with a clear "too large" error.
"""

from __future__ import annotations

from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

from models_app.storage import max_upload_bytes


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    def __init__(self, request=None):
        super().__init__(request)
        self.limit = max_upload_bytes()
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            self.file.close()
            raise StopUpload(connection_reset=False)
        return super().receive_data_chunk(raw_data, start)


def install_upload_limit(request) -> None:
    """Call before reading request.POST/FILES (or DRF's request.data)."""
    django_request = getattr(request, "_request", request)
    django_request.upload_too_large = False
    django_request.upload_handlers = [LimitedTemporaryFileUploadHandler(django_request)]


def upload_too_large(request) -> bool:
    django_request = getattr(request, "_request", request)
    if getattr(django_request, "upload_too_large", False):
        return True
    try:
        length = int(django_request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    # Multipart overhead is small; anything past limit + 1 MB cannot fit.
    return length > max_upload_bytes() + 1024 * 1024
