"""MIME → AhaSend payload: pure functions, no I/O.

``message`` parses a message and builds ``CreateConversationMessageRequest`` payloads from
what the other modules read: ``repair`` (broken input mended), ``tree`` (the parse and
defensive reads of it), ``headers``, ``addresses``, ``charsets``, ``parts`` (bodies,
signed and encrypted mail), ``attachments`` with ``verbatim`` and ``transfer``, ``hostile``
(hostile values out of the finished payload). ``directives`` reads the ``ahasend-*``
headers, ``idempotency`` derives the keys and ``wire`` serialises a payload.
"""
