"""The compose file, checked without Docker: services, pinned images, healthchecks, no default secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"

SECRET_WORDS = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|HASH_KEY|BASIC_AUTH|ROOT_USER|ACCESS_KEY", re.I)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "qdrant",
        "redis",
        "minio",
        "minio-init",
        "api",
        "planner",
        "worker-cpu",
        "worker-gpu",
        "flower",
    } <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["flower"]["profiles"] == ["flower"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--device cuda:0" in " ".join(services["worker-gpu"]["command"])
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image (built images are tagged too)"
        repo, _, tag = image.rpartition(":")
        assert repo and tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+|RELEASE\.\d{4}-", tag), (
            f"{name}: {image!r} not pinned"
        )
    assert compose["services"]["qdrant"]["image"].startswith("qdrant/qdrant:v1.")
    assert compose["services"]["redis"]["image"].startswith("redis:7.")


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue  # one-shot init job
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_no_default_secrets(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    found = 0
    for match in INTERPOLATION.finditer(text):
        var, op, _arg = match.groups()
        if SECRET_WORDS.search(var):
            found += 1
            assert op in (":?", "?"), f"${{{var}}} must be required (${{{var}:?...}}), not defaulted"
    assert found >= 8
    # no literal credentials in environment blocks either
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRET_WORDS.search(key) and not key.endswith("_FILE"):
                assert "${" in str(value), f"{name}.{key} is a literal secret"


def test_security_and_durability_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    qdrant_env = services["qdrant"]["environment"]
    assert "QDRANT__SERVICE__API_KEY" in qdrant_env and "QDRANT__SERVICE__READ_ONLY_API_KEY" in qdrant_env
    assert "READ_ONLY" in services["api"]["environment"]["RADSEARCH_STORE__API_KEY"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "noeviction" in redis_cmd and "--requirepass" in redis_cmd
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_RADSEARCH"].startswith("/data/")
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_RADSEARCH"].endswith("/v1/events/s3")
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_the_api_has_the_memory_ceiling_the_long_run_benchmark_uses(compose: dict[str, Any]) -> None:
    # bench/search.py --long-run runs the serving process under the same ceiling (Makefile: bench)
    assert compose["services"]["api"]["mem_limit"] == "${RADSEARCH_API_MEM_LIMIT:-2g}"
    bench = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "--long-run 10000 --memory-limit-mb 2048" in bench


def test_dockerfiles_and_init_script_exist() -> None:
    for path in ("infra/Dockerfile.cpu", "infra/Dockerfile.cuda", "infra/minio-init.sh", "infra/README.md"):
        assert (REPO / path).is_file(), path
    cuda = (REPO / "infra/Dockerfile.cuda").read_text()
    assert "whl/cu" in cuda and "cuda:0" in cuda
    assert "whl/cpu" in (REPO / "infra/Dockerfile.cpu").read_text()


def test_monitoring_profile_scrapes_the_api_and_every_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"] == services["grafana"]["profiles"]
    scrape = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    api = jobs["radsearch-api"]
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    secret = Path(api["authorization"]["credentials_file"]).name
    assert secret in services["prometheus"]["secrets"] and secret in compose["secrets"]
    workers = jobs["radsearch-workers"]["dns_sd_configs"][0]
    for name in workers["names"]:
        command = " ".join(services[name]["command"])
        assert f"--metrics-port {workers['port']}" in command, name
    env = compose["x-radsearch-env"]
    assert env["RADSEARCH_CELERY__METRICS_HOST"] == "0.0.0.0" and env["PROMETHEUS_MULTIPROC_DIR"]
    for mount in ("./infra/grafana/provisioning", "./infra/grafana/dashboards"):
        assert any(volume.startswith(mount) for volume in services["grafana"]["volumes"])
