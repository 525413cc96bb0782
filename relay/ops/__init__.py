"""Operations: logging, metrics, the admin HTTP server, health probes, systemd, the event loop."""
