"""The wire contract of Sluice: what travels on NATS and how to reach it.

``shared`` owns message and record types, subject and bucket names, errors,
encoding, settings, the clock, the NATS connection and stack bootstrap. It
imports nothing from ``engine`` or ``services``.
"""

from . import names
from .clock import Clock, FakeClock, SystemClock
from .errors import (
    AmbiguousName,
    Conflict,
    DeploymentNotFound,
    FlowRunNotFound,
    InternalError,
    InvalidParameters,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    RequestError,
    SluiceError,
    StackUnavailable,
)
from .models import (
    CronSchedule,
    Deployment,
    DeploymentSchedule,
    FlowRun,
    Infrastructure,
    IntervalSchedule,
    RRuleSchedule,
)
from .settings import Settings
from .states import TERMINAL_TYPES, State, StateDetails, StateType

__all__ = [
    "TERMINAL_TYPES",
    "AmbiguousName",
    "Clock",
    "Conflict",
    "CronSchedule",
    "Deployment",
    "DeploymentNotFound",
    "DeploymentSchedule",
    "FakeClock",
    "FlowRun",
    "FlowRunNotFound",
    "Infrastructure",
    "InternalError",
    "IntervalSchedule",
    "InvalidParameters",
    "MalformedRequest",
    "NotFound",
    "PayloadTooLarge",
    "RRuleSchedule",
    "RequestError",
    "Settings",
    "SluiceError",
    "StackUnavailable",
    "State",
    "StateDetails",
    "StateType",
    "SystemClock",
    "names",
]
