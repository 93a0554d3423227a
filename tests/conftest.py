"""Shared test configuration: the fixture plugins every module may use, and the order tests run in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# A real redis-server (redis_url, redis_client) and a real Label Studio (label_studio, ls_client...):
# session-scoped, started only when a test asks for them.
pytest_plugins = ["helpers.redis_server", "e2e.label_studio"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the e2e tests (a real Label Studio, minutes to start) after every fast test, so a broken
    unit test reports first; the order within each group is unchanged."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that collects no test is a broken run, not a green one: turn pytest's exit 5 into a failure.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The test CPU is shared by many processes: one intra-op thread avoids oversubscription spin-waits.
    Modules that run torch use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch  # here, not at the top: most test modules never load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny() -> Any:
    """The tiny random open_clip model (32-d, 32x32 input): the real open_clip code path in milliseconds.
    Shared by the session: a test that trains it works on a copy."""
    from trainer.encoders import create_encoder

    return create_encoder("open_clip_tiny", precision="fp32", device="cpu")


@pytest.fixture(scope="session")
def mobilenet() -> Any:
    """The real shipped MobileNetV2 and weights at a 64x64 input: a twelfth of the 224 cost."""
    from trainer.encoders import create_encoder

    return create_encoder("mobilenetv2", precision="fp32", device="cpu", image_size=64)
