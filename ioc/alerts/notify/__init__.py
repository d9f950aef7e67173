"""Notifications: render an incident change, send it by webhook or email, retry, rate-limit.

The alert engine writes rows into the ``notifications`` outbox (``storage.notifications.enqueue``) in
the same transaction as the change they report; :class:`NotificationDispatcher` claims due rows, paces
them per (channel, target), sends them and records every outcome there, so failures stay visible.
The WebSocket feed is not a channel here: the engine publishes incident changes to the live hub itself.
"""

from ioc.alerts.notify.config import NotifyConfig
from ioc.alerts.notify.dispatcher import NotificationDispatcher, notification_rows, targets_for
from ioc.alerts.notify.render import Rendered, render
from ioc.alerts.notify.webhook import DeliveryError

__all__ = [
    "DeliveryError",
    "NotificationDispatcher",
    "NotifyConfig",
    "Rendered",
    "notification_rows",
    "render",
    "targets_for",
]
