"""Stats: the recorded events in, per-turn latency waterfalls, counts and Prometheus metrics out."""

from workers.runtime import main

from .worker import WORKER

main(WORKER)
