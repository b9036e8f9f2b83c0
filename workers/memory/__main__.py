"""Memory: durable conversation store (MongoDB wire protocol) and the context service."""

from workers.runtime import main

from .worker import WORKER

main(WORKER)
