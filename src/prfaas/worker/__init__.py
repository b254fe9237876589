"""The worker process: it hosts one instance and drives its engine through the engine seam
(``engine_api``). ``prfaas worker`` runs one."""

from prfaas.worker.app import create_worker_app
from prfaas.worker.config import WorkerConfig
from prfaas.worker.process import Worker

__all__ = ["Worker", "WorkerConfig", "create_worker_app"]
