"""Schemathesis against the OpenAPI document the server publishes (proxy/openapi.py), on a real
`llamagate serve` in front of tests/fake_llama_server.py: for every operation, bodies that fit the
schema and bodies that break it, a bounded number of each (derandomized, so a failure
reproduces). Every answer: no 5xx, a status and content type the document lists, a JSON body that
fits its schema, and a 4xx for what breaks the schema. Pulls and pushes are left out (they reach
for a registry; tests/test_corpus.py sends them every bad body)."""

from __future__ import annotations

import zlib

import httpx
import msgspec
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks

from proxy.openapi import document

# Schemathesis's examples and fuzzing phases; its coverage phase (every boundary of every field)
# alone would take minutes here.
CONFIG = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(msgspec.json.decode(document()), config=CONFIG)
schema = schema.exclude(path=["/api/pull", "/api/push"])
CHECKS = [checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance,
          checks.negative_data_rejection]


def test_the_server_publishes_this_document(fake_server) -> None:
    r = httpx.get(f"{fake_server.url}/api/openapi.json")
    assert r.status_code == 200 and r.content == document()


@schema.parametrize()
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz(case, fake_server) -> None:
    # Half the bodies name the model the server has, to reach past the lookup into translation,
    # the scheduler and the fake llama-server.
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and zlib.crc32(repr(body).encode()) % 2:
        case.body["model"] = "tiny"
    response = case.call(base_url=fake_server.url, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.500}: {response.text[:500]}"
    case.validate_response(response, checks=CHECKS)
