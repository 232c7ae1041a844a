"""pbxwarden: a virtual PBX that is secure by default against toll fraud."""

from pbxwarden import _core

__version__ = "0.1.0"

_core.select()  # compiled SIP core, or its sources (see _core)
