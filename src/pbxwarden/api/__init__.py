"""The admin HTTP API (FastAPI): configuration, operations, admin accounts and audit.

Served next to the SIP server on the same event loop (see :mod:`pbxwarden.api.serve`),
reachable only from ``http.admin_networks``.
"""

from pbxwarden.api.app import create_app

__all__ = ["create_app"]
