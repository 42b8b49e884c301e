"""Fixtures shared by the deployment tests: docker leftovers are removed after each test.

(The session-wide removal of dependency-stage images lives in tests/conftest.py.)
"""

from tests.deployments_app.test_lifecycle import cleanup_docker  # noqa: F401 - fixture by name
from tests.deployments_app.test_reliability import (  # noqa: F401, E402 - fixtures by name
    crash_workers,
    own_containers,
)
