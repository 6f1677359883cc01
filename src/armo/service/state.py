"""The objects one app instance owns, kept together on `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from armo.service.auth import Auth
from armo.service.batcher import MicroBatcher
from armo.service.metrics import CONTENT_TYPE, ServiceMetrics
from armo.service.reloader import Reloader
from armo.service.scoring import Scorer
from armo.settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: ServiceMetrics
    auth: Auth
    reloader: Reloader
    batcher: MicroBatcher
    scorer: Scorer
    metrics_content_type: str = CONTENT_TYPE


def services_of(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services
