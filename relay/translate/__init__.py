"""MIME → AhaSend payload: pure functions, no I/O.

``message`` parses a message and builds ``CreateConversationMessageRequest`` payloads,
``directives`` reads the ``ahasend-*`` headers, ``idempotency`` derives the keys and
``wire`` serialises a payload to the request body.
"""
