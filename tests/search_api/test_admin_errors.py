"""Admin failures are fast and clear: weights that cannot be had → 424 in seconds (no hub retries),
an unreachable S3 endpoint for ``s3://`` weights → 502 naming it; never a 500.

Nothing is mocked but the edge of the world: the hub endpoint and the S3 endpoint are closed local
ports (or ``HF_HUB_OFFLINE`` is set), so the real resolution code runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.api_client import error_for
from core.config import RuntimeSettings, S3Settings, SecuritySettings, Settings
from core.errors import WeightsUnavailable
from core.index.factory import open_index
from radsearch.commands.main import exit_code_for
from search_api import create_app
from tests.conftest import free_port

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture(scope="module")
def s3_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, s3_port: int) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
        s3=S3Settings(endpoint=f"127.0.0.1:{s3_port}"),
    )


@pytest.fixture(scope="module")
def admin(settings: Settings) -> Iterator[TestClient]:
    index = open_index(settings)
    with TestClient(create_app(settings, index=index)) as client:
        yield client
    index.close()


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's own Hugging Face cache must not satisfy the request."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


def _create(admin: TestClient, **body: object) -> tuple[int, str, float]:
    started = time.monotonic()
    response = admin.post("/v1/collections", json={"name": "bmc", **body})
    elapsed = time.monotonic() - started
    return response.status_code, response.json()["detail"], elapsed


@pytest.mark.usefixtures("empty_hub_cache")
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_missing_weights_are_424_within_seconds(
    admin: TestClient, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # the hub at a closed port: the connect probe fails at once, no download is tried
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    status, detail, elapsed = _create(admin, encoder="biomedclip")
    assert status == 424, detail
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert detail.startswith("encoder 'biomedclip': ")
    assert ("offline" if how == "HF_HUB_OFFLINE" else "hub (127.0.0.1) cannot be reached") in detail
    assert BIOMEDCLIP_REPO in detail
    # every way to provide the weights, said once, in the words of an HTTP caller
    for way in (
        "local file or directory",
        "s3:// URI",
        "hub id with network access",
        "RADSEARCH_MODELS__CACHE_DIR",
    ):
        assert detail.count(way) == 1, way
    assert "--weights" not in detail and "Error" not in detail
    assert len(detail) < 800
    assert admin.get("/v1/collections/bmc").status_code == 404  # nothing left behind


def test_unreachable_s3_endpoint_for_weights_is_502_naming_it(admin: TestClient, s3_port: int) -> None:
    status, detail, elapsed = _create(
        admin, encoder="biomedclip", weights="s3://models/biomedclip.safetensors"
    )
    assert status == 502, detail
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert f"cannot reach the S3 endpoint 127.0.0.1:{s3_port}" in detail
    assert "--weights" not in detail
    assert admin.get("/v1/collections/bmc").status_code == 404


def test_a_424_comes_back_to_a_remote_cli_as_weights_unavailable() -> None:
    # `radsearch --url ... collections create` gets the server's message, and the CLI its hint
    error = error_for(424, "encoder 'biomedclip': offline and ...", "http://127.0.0.1:8000")
    assert isinstance(error, WeightsUnavailable) and str(error) == "encoder 'biomedclip': offline and ..."
    assert exit_code_for(error) == 2


def test_a_dicomweb_job_on_a_server_without_a_pacs_says_which_setting(admin: TestClient) -> None:
    """Found in the walkthrough: `radsearch ingest dicomweb+http://...` while a server without
    dicomweb.url serves answered only that the source "must be the configured PACS"."""
    answer = admin.post(
        "/v1/ingest-jobs",
        json={
            "source": "dicomweb+http://127.0.0.1:8042/dicom-web",
            "collections": ["c"],
            "executor": "owner",
        },
    )
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "source", answer.text
    assert "no PACS configured" in answer.json()["detail"] and "RADSEARCH_DICOMWEB__URL" in answer.text
    assert "8042" not in answer.text  # the request's URL is not echoed


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_weights_that_are_not_a_checkpoint_are_424_naming_the_file(
    admin: TestClient, tmp_path: Path, suffix: str
) -> None:
    """Found in the walkthrough: a corrupt weights file raised SafetensorError or UnpicklingError
    past the loader: "unexpected error" on the command line, a 500 over HTTP."""
    weights = tmp_path / f"model{suffix}"
    weights.write_bytes(bytes(range(256)) * 4)
    status, detail, _ = _create(admin, encoder="clip-vit-b16", weights=str(weights))
    assert status == 424, detail
    assert f"weights {weights} do not load into 'ViT-B-16'" in detail


@pytest.mark.parametrize(
    ("encoder", "says"),
    [
        ({"name": "x"}, "invalid encoder spec: family: Field required; checkpoint: Field required"),
        (
            {"name": "x", "family": "open_clip", "checkpoint": "ViT-B-16", "dim": "many"},
            "dim: Input should be",
        ),
    ],
)
def test_an_invalid_full_spec_names_each_field_never_its_value(
    admin: TestClient, encoder: dict[str, object], says: str
) -> None:
    status, detail, _ = _create(admin, encoder=encoder)
    assert status == 400 and says in detail, detail
    assert "input_value" not in detail and "many" not in detail
