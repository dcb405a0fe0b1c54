"""A bounded schemathesis run over the service's own OpenAPI schema, against a real service process.

Every operation gets generated requests, valid (positive mode) and invalid (negative mode), within a fixed number of examples and a
fixed seed (the run is the same each time). Checks: no 5xx (not_a_server_error) and every response as
the schema documents it (response_schema_conformance). The whole run takes about a minute here.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from llmemb_testing.servers import ServiceProcess, shared_test_bundle
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.process   # every test here starts a process (a service, Redis or a command)

EXAMPLES_PER_OPERATION = 30

# The schema the service publishes (no bundle is needed to build it), loaded at collection time so
# that each operation is its own test.
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None, bundle_path="unused")).openapi())
OPERATIONS = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in SCHEMA.get_all_operations())}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # Local catalogue (no Redis): generated PUT and DELETE calls change only this process.
    proc = ServiceProcess(shared_test_bundle(), tmp_path_factory.mktemp("fuzz-logs")).start()
    proc.wait_ready()
    yield proc
    proc.stop()


# Negative cases need something to break: a body or a path parameter.
RUNS = [(name, mode) for name in sorted(OPERATIONS) for mode in schemathesis.GenerationMode
        if mode is schemathesis.GenerationMode.POSITIVE or "{" in name or not name.startswith("GET ")]


@pytest.mark.parametrize("name, mode", RUNS, ids=[f"{n} {m.value}" for n, m in RUNS])
def test_no_server_error_and_responses_as_documented(name, mode, service):
    @given(case=OPERATIONS[name].as_strategy(mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=service.url, checks=[not_a_server_error, response_schema_conformance])

    run()
