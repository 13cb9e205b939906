"""The populated Edge index and API client the search-API test modules share; each module brings
its own module-scoped ``settings``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from core.config import Settings
from core.index.base import VectorIndex
from core.index.factory import open_index
from search_api import create_app
from tests.search_api.test_api import Corpus, populate


@pytest.fixture(scope="module")
def index(settings: Settings) -> Iterator[VectorIndex]:
    opened = open_index(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def corpus(index: VectorIndex, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return populate(index, settings, tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def client(settings: Settings, index: VectorIndex, corpus: Corpus) -> Iterator[TestClient]:
    with TestClient(create_app(settings, index=index)) as test_client:
        yield test_client
