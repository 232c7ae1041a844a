"""pbxwarden: a virtual PBX that is secure by default against toll fraud."""

__version__ = "0.1.0"
