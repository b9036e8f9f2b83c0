"""Voice: reply deltas in, the assistant's speech out (PCM16 frames)."""

from workers.runtime import main

from .worker import WORKER

main(WORKER)
