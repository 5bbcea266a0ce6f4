"""The worker's numeric and naming options, checked once by a pydantic model.

:func:`check_options` validates what ``Worker(...)`` is given and turns pydantic's report
into kaffi's :class:`~kaffi.errors.ValidationError`: one line naming the option (its
``field``) and the value refused. Queue lists are parsed by :mod:`kaffi.worker.queues`;
the server address by :mod:`kaffi.client.config`.

This module does no I/O and must not import the rest of the worker.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from kaffi.errors import ValidationError

__all__ = ["WorkerOptions", "check_options"]

_WholeNumber = Annotated[int, Field(strict=True)]
_Seconds = Annotated[float, Field(strict=True)]


class WorkerOptions(BaseModel):
    """The options :class:`~kaffi.worker.Worker` checks, with their defaults resolved
    (``pool_size`` becomes concurrency + 2 when not given, as in the Node worker)."""

    model_config = ConfigDict(extra="forbid")

    concurrency: Annotated[_WholeNumber, Field(ge=1)] = 20
    pool_size: _WholeNumber | None = None
    timeout: Annotated[_Seconds, Field(ge=0)] = 8.0
    beat_interval: Annotated[_Seconds, Field(gt=0, le=60)] = 15.0
    max_jobs: Annotated[_WholeNumber, Field(ge=1)] | None = None
    max_memory_mb: Annotated[_Seconds, Field(gt=0)] | None = None
    labels: tuple[Annotated[str, Field(strict=True)], ...] = ()
    #: Empty or None: a random wid, this machine's host name.
    wid: Annotated[str, Field(strict=True)] | None = None
    hostname: Annotated[str, Field(strict=True)] | None = None

    @model_validator(mode="after")
    def _pool_fits_the_slots(self) -> WorkerOptions:
        # A connection per slot and one for the heartbeat, at the least.
        if self.pool_size is None:
            self.pool_size = self.concurrency + 2
        elif self.pool_size < self.concurrency + 1:
            raise PydanticCustomError("pool_size", "pool_size is below concurrency + 1")
        return self


#: The one-line error for each option; ``{value!r}`` is what was given.
_MESSAGES = {
    "concurrency": "concurrency must be a whole number of at least 1, got {value!r}",
    "pool_size": (
        "pool_size must be a whole number of at least concurrency + 1 ({least}: a connection"
        " per job slot and one for the heartbeat), got {value!r}"
    ),
    "timeout": "timeout must be 0 or more seconds, got {value!r}",
    "beat_interval": (
        "beat_interval must be more than 0 and at most 60 seconds (Faktory forgets a worker"
        " silent for 60 s), got {value!r}"
    ),
    "max_jobs": "max_jobs must be at least 1, got {value!r}",
    "max_memory_mb": "max_memory_mb must be positive, got {value!r}",
    "labels": "labels must be a list of strings, got {value!r}",
    "wid": "wid must be a string, got {value!r}",
    "hostname": "hostname must be a string, got {value!r}",
}


def check_options(**values: Any) -> WorkerOptions:
    """The options validated, or :class:`~kaffi.errors.ValidationError` naming the first
    one refused (in the order of :class:`WorkerOptions`' fields)."""
    try:
        return WorkerOptions(**values)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else error["type"]
        value = values.get(field)
        concurrency = values.get("concurrency", 20)
        least = concurrency + 1 if isinstance(concurrency, int) else "concurrency + 1"
        raise ValidationError(
            _MESSAGES[field].format(value=value, least=least), field=field
        ) from None
