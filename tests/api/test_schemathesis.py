"""A bounded schemathesis run against the live OpenAPI schema, as an admin: whatever the
input, valid or not, the API never answers with a server error."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case

from tests.api.conftest import Api

pytestmark = pytest.mark.timeout(90)

EXAMPLES = 8


def fuzz(base: str, token: str) -> tuple[list[str], int, list[int]]:
    """(failures, operations run, statuses); synchronous (requests), run in a thread."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation's schema is valid
        if result.ok().path == "/api/v1/events":
            continue  # an endless stream (503 here, no SIP server): tested end to end instead
        operations.append(result.ok())
    # revoking tokens last: the run's own token may be among those revoked
    operations.sort(key=lambda op: op.method.upper() == "DELETE" and "/tokens/" in op.path)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    statuses: list[int] = []
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Case[Any]) -> None:
                response = case.call(base_url=base, headers=headers, timeout=10)
                statuses.append(response.status_code)
                case.validate_response(response, checks=[not_a_server_error], headers=headers)

            try:
                check()
            except Unsatisfiable:  # nothing to get wrong (no parameters, no body)
                continue
            except Exception as exc:  # collect every operation's failure, not just the first
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])
    return failures, len(operations), statuses


async def test_no_server_error_for_any_input(api: Api) -> None:
    started = time.monotonic()
    failures, count, statuses = await asyncio.to_thread(fuzz, api.base, api.tokens["admin"])
    assert count >= 30
    # the run got past authentication: most answers are not 401, and many succeeded
    # (random SIP passwords in bodies are mostly weak, so those get 400 with the reason)
    assert sum(s == 401 for s in statuses) < len(statuses) // 2, sorted(statuses)
    assert sum(200 <= s < 300 for s in statuses) > len(statuses) // 5, sorted(statuses)
    assert not failures, "\n\n".join(failures)
    assert time.monotonic() - started < 80
