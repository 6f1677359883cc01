"""Schemathesis over every operation of the OpenAPI schema, against a real `armo serve` process: no server error,
every response as the schema describes it, and the fuzzer builds valid scoring requests too (it can only because
the schema states the messages/prompt one-of). Bounded: a fixed number of examples per operation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from armo.model_store.backbone import Backbone
from armo.model_store.store import ModelStore
from tests.conftest import make_artifact
from tests.live import API_KEY, armo_server

STATUSES: Counter[tuple[str, int]] = Counter()
EXAMPLES = 60


@pytest.fixture(scope="module")
def server_url(tiny_backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = ModelStore(tmp_path_factory.mktemp("store"))
    store.publish(*make_artifact(tiny_backbone))
    with armo_server(store, Path(tmp_path_factory.mktemp("server"))) as server:
        yield server.url


def test_every_operation_fuzzed(server_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
            STATUSES[(case.path, response.status_code)] += 1
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        fuzz()
    assert not any(status >= 500 for _, status in STATUSES), STATUSES
    scored = sum(STATUSES[(path, 200)] for path in ("/v1/score", "/v1/explain", "/v1/compare", "/get_reward"))
    assert scored > 0, STATUSES  # the fuzzer went past validation into the model
    print(dict(STATUSES))
