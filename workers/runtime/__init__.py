"""What every worker shares: settings, logging, the bus, provisioning, dead letters, health, shutdown."""

from .bus import Bus
from .settings import RuntimeSettings, load_settings
from .worker import WorkerSpec, main, running_worker

__all__ = ["Bus", "RuntimeSettings", "WorkerSpec", "load_settings", "main", "running_worker"]
