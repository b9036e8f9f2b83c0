"""What every worker shares: settings, logging, the bus, provisioning, dead letters, health, shutdown."""

from .bus import Bus
from .consumes import Delivery, consumes, serves
from .settings import RuntimeSettings, load_settings
from .worker import StartupError, Worker, main, running_worker

__all__ = [
    "Bus",
    "Delivery",
    "RuntimeSettings",
    "StartupError",
    "Worker",
    "consumes",
    "load_settings",
    "main",
    "running_worker",
    "serves",
]
