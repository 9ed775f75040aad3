"""Exception hierarchy of the monitoring package; scripts map every one to exit code 2."""

from __future__ import annotations


class MonitoringError(Exception):
    """Base class for every error raised by monitoring."""


class MonitoringConfigError(MonitoringError, ValueError):
    """A monitoring setting is invalid (unknown drift method, bad threshold, ...)."""


class EmptyWindowError(MonitoringError):
    """The current window holds no served rows (nothing to compare)."""


class NotEnoughDataError(MonitoringError):
    """A window or the reference holds fewer rows than the configured minimum."""


class ReferenceNotFoundError(MonitoringError):
    """No model, no reference sample, or the reference shares no features with the log."""


class WebhookError(MonitoringError):
    """The drift webhook could not be delivered."""
