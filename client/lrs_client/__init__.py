"""Python client and command line for the LR schedule service.

from lrs_client import Client
with Client("http://127.0.0.1:8000") as lrs:
    schedule = lrs.schedule("StepLR", 100, step_size=30, gamma=0.1)
    print(schedule.lr[0][:3])
"""

__version__ = "0.1.0"

from lrs_client.client import EXPORT_TARGETS, AsyncClient, Client
from lrs_client.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidSpec,
    LRSError,
    NotFound,
    ProblemError,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from lrs_client.models import (
    BatchSlot,
    Catalog,
    DropoutResult,
    Event,
    Info,
    Job,
    JobPage,
    Schedule,
    SchedulerInfo,
)

__all__ = [
    "EXPORT_TARGETS",
    "AsyncClient",
    "BatchSlot",
    "Catalog",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DropoutResult",
    "Event",
    "Forbidden",
    "Info",
    "InvalidSpec",
    "Job",
    "JobPage",
    "LRSError",
    "NotFound",
    "ProblemError",
    "RateLimited",
    "Schedule",
    "SchedulerInfo",
    "Unauthorized",
    "Unavailable",
]
