"""Secure defaults: binding rules, docs switch, key handling, the configuration check line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from core.config import ApiKeyEntry, SecuritySettings, Settings
from core.errors import ConfigError
from radsearch.commands.main import EXIT_USAGE, main
from search_api import create_app
from search_api.security import Authenticator, check_bind, hash_api_key
from tests.security.conftest import SecuredApp


def test_bind_rules() -> None:
    open_security = SecuritySettings()
    assert "loopback" in (check_bind("127.0.0.1", open_security) or "")
    assert check_bind("localhost", open_security)
    assert check_bind("::1", open_security)
    for host in ("0.0.0.0", "::", "10.0.0.5", "radsearch.example.org"):
        with pytest.raises(ConfigError, match="refusing to bind"):
            check_bind(host, open_security)
    keyed = SecuritySettings(api_keys=[ApiKeyEntry(name="a", role="reader", sha256="0" * 64)])
    assert check_bind("0.0.0.0", keyed) is None


def test_serve_refuses_a_public_bind_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    calls: list[str] = []

    def run(server: uvicorn.Server) -> None:  # what would serve: records where, as started
        calls.append(server.config.host)
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    for name in list(__import__("os").environ):
        if name.startswith("RADSEARCH_"):
            monkeypatch.delenv(name)
    assert main(["--data-dir", str(tmp_path), "serve", "--host", "0.0.0.0"]) == EXIT_USAGE
    refused = capsys.readouterr().err
    assert "refusing to bind 0.0.0.0" in refused and not calls
    assert main(["--data-dir", str(tmp_path), "serve", "--host", "127.0.0.1", "--port", "8999"]) == 0
    notice = capsys.readouterr().err
    assert "no API keys configured" in notice and calls == ["127.0.0.1"]
    monkeypatch.setenv(
        "RADSEARCH_SECURITY__API_KEYS", json.dumps([{"name": "w", "role": "reader", "sha256": "a" * 64}])
    )
    assert main(["--data-dir", str(tmp_path), "serve", "--host", "0.0.0.0", "--port", "8999"]) == 0
    assert calls[-1] == "0.0.0.0"
    print("bind_rules: open_public_bind=refused open_loopback=served_with_notice keyed_public_bind=served")


def test_keys_create_and_hash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--role", "ingest", "--name", "worker-1"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].split(": ", 1)[1]
    entry = json.loads(out[-1])
    assert entry == {"name": "worker-1", "role": "ingest", "sha256": hash_api_key(key)}
    assert key.startswith("rs_") and len(key) >= 40
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert main(["keys", "hash"]) == 0
    assert capsys.readouterr().out.strip() == entry["sha256"]
    principal = Authenticator(SecuritySettings(api_keys=[ApiKeyEntry.model_validate(entry)])).from_api_key(
        key
    )
    assert principal.name == "worker-1" and {r.value for r in principal.roles} == {"ingest"}


def test_keys_file_and_hashed_storage(tmp_path: Path, secured: SecuredApp) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(
        json.dumps([{"name": "from-file", "role": "admin", "sha256": hash_api_key("rs_file-key")}])
    )
    settings = secured.settings.model_copy(
        update={"security": SecuritySettings(hash_key=SecretStr("x"), api_keys_file=keys_file)}
    )
    with TestClient(create_app(settings, index=secured.index)) as client:
        assert (
            client.get("/v1/ingest-jobs/not-a-uuid", headers={"X-API-Key": "rs_file-key"}).status_code == 404
        )
        assert client.get("/v1/ingest-jobs/not-a-uuid", headers={"X-API-Key": "rs_wrong"}).status_code == 401
    dumped = secured.settings.model_dump_json()
    assert not any(key in dumped for key in ("rs_test-reader", "rs_test-admin", "rs_test-ingest"))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it: No such file or directory"),
        ('[{"name": ', "not JSON (line 1)"),
        ('{"name": "ops"}', 'must hold a JSON list of {"name", "role", "sha256"} entries'),
        (
            json.dumps(
                [
                    {"name": "ops", "role": "admin", "sha256": "0" * 64},
                    {"name": "x", "role": "god", "sha256": "rs_secret"},
                ]
            ),
            "entry 2: role: Input should be",
        ),
    ],
    ids=["missing", "not-json", "not-a-list", "bad-entry"],
)
def test_a_bad_keys_file_is_a_usage_error_naming_it(
    content: str | None, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a missing or malformed RADSEARCH_SECURITY__API_KEYS_FILE stopped
    `radsearch serve` with "unexpected error: FileNotFoundError" or "ValidationError: 2 validation
    errors for ApiKeyEntry"."""
    keys_file = tmp_path / "keys.json"
    if content is not None:
        keys_file.write_text(content)
    security = SecuritySettings(hash_key=SecretStr("x"), api_keys_file=keys_file)
    with pytest.raises(ConfigError) as refused:
        security.key_entries()
    message = str(refused.value)
    assert message.startswith(f"RADSEARCH_SECURITY__API_KEYS_FILE ({keys_file}): ") and says in message
    assert "rs_secret" not in message  # no value of the file is echoed


def test_a_key_listed_twice_is_refused_whichever_role_each_entry_gives(tmp_path: Path) -> None:
    """Found in the walkthrough: one key in two entries (a role raised by a new entry, the old one
    left in place) got the role of the last entry read, silently."""
    digest = hash_api_key("rs_" + "k" * 40)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"name": "ops", "role": "admin", "sha256": digest.upper()}]))
    security = SecuritySettings(
        hash_key=SecretStr("x"),
        api_keys=[ApiKeyEntry(name="ops", role="reader", sha256=digest)],
        api_keys_file=keys_file,
    )
    with pytest.raises(ConfigError) as refused:
        security.key_entries()
    assert str(refused.value) == (
        "API key entries 'ops' and 'ops' hold the same key (one sha256): a key has one name and one "
        "role; keep one entry"
    )
    other = ApiKeyEntry(name="ops", role="admin", sha256=hash_api_key("rs_" + "m" * 40))
    assert (
        len(SecuritySettings(api_keys=[security.api_keys[0], other]).key_entries()) == 2
    )  # a name may hold two


@pytest.mark.parametrize("name", ["", "x y/z", "a" * 65])
def test_keys_create_refuses_a_name_the_settings_would_refuse(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `keys create --name ''` printed a key and an entry that stopped
    the server's start afterwards."""
    assert (
        main(["--data-dir", str(tmp_path / "data"), "keys", "create", "--role", "reader", "--name", name])
        == 2
    )
    captured = capsys.readouterr()
    assert "rs_" not in captured.out and "1 to 64 letters, digits and _ . @ -" in captured.err


def test_security_configuration_line(secured: SecuredApp) -> None:
    """T14, for what this service controls itself (Qdrant/MinIO/Redis settings live in infra/)."""
    settings = secured.settings
    docs_off = all(secured.client.get(p).status_code == 404 for p in ("/docs", "/redoc", "/openapi.json"))
    default_docs = Settings().api.docs
    from workers.app import create_celery

    celery_accept = ",".join(sorted(create_celery(settings).conf.accept_content))
    line = (
        f"api_keys_hashed=yes docs_in_prod={'off' if docs_off else 'on'} docs_default={default_docs} "
        f"default_bind={Settings().api.host} open_public_bind=refused webhook_own_token="
        f"{'on' if settings.events.webhook_token else 'off'} celery_accept={celery_accept} "
        f"max_json_bytes={settings.api.max_json_bytes} max_upload_bytes={settings.api.max_upload_bytes}"
    )
    print(f"security_config: {line}")
    assert docs_off and Settings().api.host == "127.0.0.1" and celery_accept == "json"


def test_processes_that_make_the_hash_key_at_once_all_get_the_same_one(tmp_path: Path) -> None:
    """Seen in the code during the walkthrough (a run cannot force the interleaving): each process
    that found no key file wrote its own, so processes starting together on a fresh data dir could
    key their hashes differently for good, or read a file another had just created, still empty.
    Eight processes ask at one barrier here; they must all get the one key on disk."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    start, keys = fork.Barrier(8), fork.Queue()

    def make_key() -> None:
        start.wait()
        keys.put(Settings(data_dir=tmp_path / "data").hash_key_bytes())

    processes = [fork.Process(target=make_key) for _ in range(8)]
    for process in processes:
        process.start()
    made = {keys.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(timeout=30)
    assert len(made) == 1 and len(next(iter(made))) == 64, made
    assert (tmp_path / "data" / "hash.key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["hash.key"]  # nothing left aside


@pytest.mark.parametrize("content", [b"", b"0123456789abcdef\n", b"\xff\xfe"], ids=["empty", "cut", "binary"])
def test_a_hash_key_file_that_was_emptied_or_cut_is_refused(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: an emptied hash.key keyed every new hash of patient ids and
    DICOM UIDs with nothing, silently."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "hash.key").write_bytes(content)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(folder / "a.png")
    assert main(["--data-dir", str(data), "ingest", str(folder), "--collection", "c"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"radsearch: error: the hash key {data / 'hash.key'}" in err
    assert ("not the hex text" if content == b"\xff\xfe" else "Restore it from a backup") in err
    assert (data / "hash.key").read_bytes() == content  # never replaced behind the operator's back
