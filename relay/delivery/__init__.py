"""The delivery side: API client and transports, retries, pacing, send-now-or-spool, the
spool and its worker, bounce notices."""
