"""The delivery side: API client and transports, routes, the backoff and spool policy,
retries, pacing, send-now-or-spool, the spool (backend contract and SQLite store) and its
worker, bounce notices."""
