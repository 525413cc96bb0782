"""Real SMTP clients driven by the interoperability tests (see test_client_matrix.py)."""
