"""How a caller marks an LLM request as background work (summaries and the like).

The local server (ops/llama_cpp_serve.py) serves a request carrying ``X-SB-Priority: background``
only while no other request is in flight, and aborts it as soon as one arrives: the background
caller gets HTTP 503 and tries again later. Other servers ignore the header.
"""

from __future__ import annotations

PRIORITY_HEADER = "X-SB-Priority"
BACKGROUND = "background"
BACKGROUND_HEADERS = {PRIORITY_HEADER: BACKGROUND}
