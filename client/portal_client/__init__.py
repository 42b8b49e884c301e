"""Client library for the Model Portal API (no Django needed)."""

from portal_client.client import ModelUri, PortalClient, PortalError, parse_uri

__all__ = ["ModelUri", "PortalClient", "PortalError", "parse_uri"]
__version__ = "0.1.0"
