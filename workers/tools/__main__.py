from workers.runtime import main

from .worker import WORKER

main(WORKER)
