"""Voice: the assistant's replies spoken (text-to-speech)."""
