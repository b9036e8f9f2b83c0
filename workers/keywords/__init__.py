"""Keywords: each user turn in, its keywords and sentiment out (the example of an optional worker)."""
