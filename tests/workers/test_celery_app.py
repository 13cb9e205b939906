"""`workers.celery_app`, the entry point of Celery's own tools, checks the environment like ``radsearch``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _import_app(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RADSEARCH_")}
    env.update(RADSEARCH_DATA_DIR=str(tmp_path), **extra)
    return subprocess.run(
        [sys.executable, "-c", "import workers.celery_app as m; print(m.app.main)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_celery_app_refuses_a_variable_that_names_no_setting(tmp_path: Path) -> None:
    done = _import_app(tmp_path, RADSEARCH_CELERY__MAX_RETRY="secret-value")
    assert done.returncode != 0
    assert (
        "RADSEARCH_CELERY__MAX_RETRY is not a setting (did you mean RADSEARCH_CELERY__MAX_RETRIES?)"
        in done.stderr
    )
    assert "secret-value" not in done.stderr


def test_celery_app_loads_with_settings_and_companion_variables(tmp_path: Path) -> None:
    done = _import_app(tmp_path, RADSEARCH_CELERY__MAX_RETRIES="2", RADSEARCH_S3_ACCESS_KEY="compose")
    assert done.returncode == 0, done.stderr


def test_celery_app_names_a_bad_value_or_json_key_never_the_value(tmp_path: Path) -> None:
    """As ``radsearch`` does: pydantic's own error would print the value (input_value=...)."""
    done = _import_app(
        tmp_path,
        RADSEARCH_SECURITY__OIDC='{"issuer": "https://kc", "audience": "a", "role_clam": "secret-value"}',
        RADSEARCH_STORE__MIN_FREE_MB="secret-number",
    )
    assert done.returncode != 0
    assert "RADSEARCH_SECURITY__OIDC__ROLE_CLAM is not a setting (did you mean 'role_claim'?)" in done.stderr
    assert "RADSEARCH_STORE__MIN_FREE_MB: Input should be a valid integer" in done.stderr
    assert "secret-value" not in done.stderr and "secret-number" not in done.stderr


def test_celery_app_refuses_a_subscription_path_template_at_start_up(tmp_path: Path) -> None:
    """Checked where the workers start, not met by each event's batch."""
    done = _import_app(
        tmp_path,
        RADSEARCH_EVENTS__SUBSCRIPTIONS=json.dumps(
            [{"bucket": "raw", "collections": ["c"], "path_template": "{modality}/{anatomi}/{file}"}]
        ),
    )
    assert done.returncode != 0
    assert (
        "RADSEARCH_EVENTS__SUBSCRIPTIONS__0__PATH_TEMPLATE: unknown field {anatomi} (did you mean 'anatomy'?)"
        in done.stderr
    )
