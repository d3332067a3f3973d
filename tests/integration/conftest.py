from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.settings import Settings


@pytest.fixture
def client(clean_state: None, settings: Settings) -> Iterator[TestClient]:
    """The API in-process (its lifespan runs), over the session's real Mongo and Redis."""
    with TestClient(create_app(settings)) as c:
        yield c
