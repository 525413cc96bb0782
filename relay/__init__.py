"""ahasend-relay: an SMTP server that forwards every message to AhaSend's HTTP API v2."""

__version__ = "0.1.0"
