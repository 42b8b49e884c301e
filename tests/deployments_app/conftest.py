"""Fixtures shared by the deployment tests: docker leftovers are removed after each test."""

from tests.deployments_app.test_lifecycle import (  # noqa: F401 - pytest finds fixtures by name
    _docker_build_cache_cleanup,
    cleanup_docker,
)
