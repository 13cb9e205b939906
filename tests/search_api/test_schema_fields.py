"""The payload and filter schemas the API publishes follow `core.payload`'s field lists: a facet
added to ``LABEL_FIELDS`` (the one place that names it) and missed in a schema fails here."""

from __future__ import annotations

from core.payload import FILTER_FIELDS, PAYLOAD_FIELDS, SearchFilter
from search_api.schemas import PayloadPublic, SearchFilterIn


def test_client_filters_are_the_filter_fields_and_key() -> None:
    client_fields = set(SearchFilterIn.model_fields)
    assert client_fields == {*FILTER_FIELDS, "key"}
    # The core filter takes the same, plus the must-not fields only the server sets.
    server_only = set(SearchFilter.model_fields) - client_fields
    assert server_only and all(name.startswith("not_") for name in server_only)


def test_published_payload_is_the_stored_allow_list() -> None:
    assert set(PayloadPublic.model_fields) == set(PAYLOAD_FIELDS)
