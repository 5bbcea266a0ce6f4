"""kaffi: background jobs for Python on the Faktory work server.

The public names are imported lazily (PEP 562), so ``import kaffi`` costs little and a
command such as ``kaffi --help`` does not load pydantic or asyncio it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kaffi._version import __version__
from kaffi.errors import (
    AppImportError,
    ArgumentsError,
    AuthenticationError,
    BatchNotFound,
    ConfigurationError,
    ConnectError,
    ConnectTimeout,
    EnterpriseRequired,
    JobError,
    KaffiError,
    LocalProtocolError,
    NotUnique,
    PoolTimeout,
    ProtocolError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    ServerError,
    TransportError,
    UnknownJobType,
    ValidationError,
    WriteError,
    WriteTimeout,
)

if TYPE_CHECKING:
    from kaffi.app import App, Task, connect, register, stop, use, work
    from kaffi.app.batch import Batch
    from kaffi.app.execution import JobContext, current_job
    from kaffi.client import AsyncClient, Client, Job, Mutation
    from kaffi.protocol.batches import BatchStatus, CallbackState
    from kaffi.protocol.enterprise import Progress
    from kaffi.protocol.models import Failure, Info, JobPayload, RejectedJob
    from kaffi.worker import Worker

_LAZY = {
    "App": "kaffi.app",
    "Task": "kaffi.app",
    "use": "kaffi.app",
    "register": "kaffi.app",
    "connect": "kaffi.app",
    "work": "kaffi.app",
    "stop": "kaffi.app",
    "JobContext": "kaffi.app.execution",
    "current_job": "kaffi.app.execution",
    "Client": "kaffi.client",
    "AsyncClient": "kaffi.client",
    "Job": "kaffi.client",
    "Mutation": "kaffi.client",
    "JobPayload": "kaffi.protocol.models",
    "Failure": "kaffi.protocol.models",
    "Info": "kaffi.protocol.models",
    "RejectedJob": "kaffi.protocol.models",
    "Progress": "kaffi.protocol.enterprise",
    "Batch": "kaffi.app.batch",
    "BatchStatus": "kaffi.protocol.batches",
    "CallbackState": "kaffi.protocol.batches",
    "Worker": "kaffi.worker",
}

__all__ = [
    "__version__",
    "App",
    "AsyncClient",
    "Batch",
    "BatchStatus",
    "CallbackState",
    "Client",
    "Failure",
    "Info",
    "Job",
    "JobContext",
    "JobPayload",
    "Mutation",
    "Progress",
    "RejectedJob",
    "Task",
    "Worker",
    "connect",
    "current_job",
    "register",
    "stop",
    "use",
    "work",
    "AppImportError",
    "ArgumentsError",
    "AuthenticationError",
    "BatchNotFound",
    "ConfigurationError",
    "ConnectError",
    "ConnectTimeout",
    "EnterpriseRequired",
    "JobError",
    "KaffiError",
    "LocalProtocolError",
    "NotUnique",
    "PoolTimeout",
    "ProtocolError",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "ServerError",
    "TransportError",
    "UnknownJobType",
    "ValidationError",
    "WriteError",
    "WriteTimeout",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kaffi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
