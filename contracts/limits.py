"""Text limits of the wire, declared once: the contracts' fields and the code that fits text to them use these.

Where text is the user's own words it is refused past its limit with a clear error (the edge's
``protocol_error``); where it is only context for a service (a retrieval query, a camera question) the
asker truncates it to the limit instead, so a long turn still gets its answer.
"""

from __future__ import annotations

TYPED_TEXT_CHARS = 8_000  # a chat command: what a user may type in one turn
TURN_TEXT_CHARS = 16_000  # a user turn or transcript on the bus (typed or spoken)
REPLY_TEXT_CHARS = 64_000  # a finished reply
QUERY_CHARS = 4_000  # a retrieval query (context: truncated by the asker)
CAMERA_PROMPT_CHARS = 2_000  # a question about the camera frame (context: truncated by the asker)
REMINDER_TEXT_CHARS = 500  # what a reminder says (the model's words: refused past it)
