"""The Docker runtime: the only module that imports the Docker SDK."""

from __future__ import annotations

import docker


def client() -> docker.DockerClient:
    return docker.from_env(timeout=10)


def docker_ping() -> bool:
    c = docker.from_env(timeout=2)
    try:
        return bool(c.ping())
    finally:
        c.close()
