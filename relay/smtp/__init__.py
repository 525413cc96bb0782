"""The SMTP side: the session, its hooks, the DATA reader, access rules and the reply table."""
