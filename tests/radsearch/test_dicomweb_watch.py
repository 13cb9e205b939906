"""`radsearch watch` following a real Orthanc's change feed: in process (the store here), and as a
separate process sending to a radsearch server, killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from core.config import ApiKeyEntry, DicomwebSettings, RuntimeSettings, SecuritySettings, Settings
from ingest.readers import DecodeLimits, decode_object
from ingest.sources.dicomweb import DicomwebSource
from radsearch.commands.main import main
from radsearch.demo_data import DemoArchive, generate_demo_archive
from radsearch.services import ensure_collection, open_catalog
from search_api.security import hash_api_key
from tests.orthanc_server import Orthanc, ServedApp, orthanc  # noqa: F401 - the fixture
from tests.workers.conftest import wait_api_job

pytestmark = pytest.mark.timeout(300)

INGEST_KEY = "watch-ingest-key"
READER_KEY = "watch-reader-key"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoArchive:
    return generate_demo_archive(tmp_path_factory.mktemp("demo"), per_class=1, seed=5)


def _files(archive: DemoArchive) -> list[Path]:
    """Demo DICOMs that are indexed (not quarantined), several modalities."""
    return sorted(p for m in ("CT", "MR", "CR") for p in (archive.root / "dicom" / m).rglob("*.dcm"))


def _frames(paths: list[Path]) -> int:
    limits = DecodeLimits.from_settings(Settings().ingest)
    return sum(len(decode_object(p.read_bytes(), p.name, limits=limits, hash_key=b"k").frames) for p in paths)


def _last_json(out: str) -> dict[str, object]:
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_watch_in_process_resumes_from_its_cursor(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = _files(archive)[:3]
    for path in files[:2]:
        orthanc.upload(path.read_bytes())
    data = str(tmp_path / "data")
    argv = ["--data-dir", data, "watch", orthanc.dicomweb, "--collection", "w", "--once", "--json"]
    assert main(argv) == 0
    assert _last_json(capsys.readouterr().out)["delivered"] == 2
    orthanc.upload(files[2].read_bytes())
    assert main(argv) == 0
    second = _last_json(capsys.readouterr().out)
    assert second["delivered"] == 1 and second["last"] == orthanc.get("/changes?limit=0")["Last"]
    with open_catalog(Settings(data_dir=Path(data)), owner="test") as catalog:
        assert catalog.index.count("w") == _frames(files)


def test_a_watchers_reconcile_pass_deletes_what_the_pacs_deleted(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No feed records a deletion: an instance deleted from the PACS stayed searchable for good.
    A pass every --reconcile-every (counted from the watcher's first start) deletes its points."""
    files = _files(archive)
    for path in files:
        orthanc.upload(path.read_bytes())
    data = tmp_path / "data"
    argv = ["--data-dir", str(data), "watch", orthanc.dicomweb, "--collection", "r", "--once", "--json"]
    assert main(argv) == 0  # the first start: delivers, and starts the reconcile clock
    first = _last_json(capsys.readouterr().out)
    assert (first["delivered"], first["reconciled"]) == (len(files), 0)
    assert main([*argv, "--reconcile-every", "3600"]) == 0  # not due yet
    assert _last_json(capsys.readouterr().out)["reconciled"] == 0

    gone = orthanc.get("/instances")[0]
    frames = orthanc.get(f"/instances/{gone}/tags?simplify")
    settings = Settings(data_dir=data)
    pacs = DicomwebSource(
        orthanc.dicomweb,
        settings.dicomweb,
        hash_key=settings.hash_key_bytes(),
        max_object_bytes=settings.ingest.max_object_bytes,
    )
    gone_ref = pacs.ref_for_uid(frames["SOPInstanceUID"])
    pacs.close()
    assert gone_ref is not None
    assert httpx.delete(f"{orthanc.url}/instances/{gone}", timeout=30).status_code == 200
    time.sleep(0.05)
    with open_catalog(Settings(data_dir=data), owner="test") as catalog:
        before = catalog.index.count("r")
        # and one instance the feed never delivered (the QIDO feed misses late ones): its points go
        points = list(catalog.index.scroll("r"))
        missed = next(p.payload["key"] for p in points if p.payload["key"] != gone_ref.key)
        catalog.index.delete("r", [p.id for p in points if p.payload["key"] == missed])
    # 1 of the 9 indexed objects is gone: past the default guard (0.1)
    assert main([*argv, "--reconcile-every", "0.01", "--max-delete-fraction", "0.2"]) == 0
    third = _last_json(capsys.readouterr().out)
    assert (third["delivered"], third["reconciled"]) == (0, 1)
    with open_catalog(Settings(data_dir=data), owner="test") as catalog:
        keys = {p.payload["key"] for p in catalog.index.scroll("r")}
        assert len(keys) == len(files) - 1 and missed in keys and gone_ref.key not in keys
        assert catalog.index.count("r") == before - int(frames.get("NumberOfFrames") or 1)

    # the guard holds: more than --max-delete-fraction gone deletes nothing, and says so
    for instance in orthanc.get("/instances")[:3]:
        httpx.delete(f"{orthanc.url}/instances/{instance}", timeout=30)
    time.sleep(0.05)
    assert main([*argv, "--reconcile-every", "0.01"]) == 0
    refused = capsys.readouterr()
    assert _last_json(refused.out)["reconciled"] == 1
    assert "more than the allowed fraction 0.1; nothing was deleted" in refused.err
    assert "radsearch ingest <the PACS> --collection NAME --prune --force" in refused.err
    with open_catalog(Settings(data_dir=data), owner="test") as catalog:
        assert len({p.payload["key"] for p in catalog.index.scroll("r")}) == len(files) - 1


def test_watch_through_a_server_creates_a_missing_collection(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reproduced first: without --encoder the watcher asked the server to create the collection
    with no encoder and stopped on "encoder (body): Field required" (the in-process watcher and
    `ingest` create it with the default encoder)."""
    settings = Settings(data_dir=tmp_path / "server", runtime=RuntimeSettings(device="cpu", dtype="float32"))
    first = _files(archive)[:1]
    orthanc.upload(first[0].read_bytes())
    with ServedApp(settings) as api:
        monkeypatch.setenv("RADSEARCH_URL", api.url)
        argv = ["--data-dir", str(tmp_path / "watcher"), "watch", orthanc.dicomweb, "--collection", "fresh"]
        assert main([*argv, "--once", "--json"]) == 0, capsys.readouterr().err
        assert _last_json(capsys.readouterr().out)["delivered"] == 1
        entry = httpx.get(f"{api.url}/v1/collections/fresh", timeout=30).json()
    assert (entry["encoder"], entry["points"]) == ("baseline", _frames(first))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServedApp, Settings]]:
    settings = Settings(
        data_dir=tmp_path / "server",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(
            hash_key=SecretStr("test-hash-key"),
            api_keys=[
                ApiKeyEntry(name="watcher", role="ingest", sha256=hash_api_key(INGEST_KEY)),
                ApiKeyEntry(name="viewer", role="reader", sha256=hash_api_key(READER_KEY)),
            ],
        ),
    )
    with open_catalog(settings, owner="test") as catalog:
        ensure_collection(catalog, "w", None)
    with ServedApp(settings) as api:
        yield api, settings


def _start_watcher(api: ServedApp, source: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RADSEARCH_API_KEY": INGEST_KEY,
        "RADSEARCH_URL": api.url,
    }
    argv = [sys.executable, "-m", "radsearch", "--data-dir", str(data_dir), "watch", source]
    argv += ["--collection", "w", "--interval", "0.2"]
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO)


def _points(api: ServedApp) -> int:
    response = httpx.get(f"{api.url}/v1/collections/w", headers={"X-API-Key": READER_KEY}, timeout=30)
    response.raise_for_status()
    return int(response.json()["points"])


def _wait_for_points(api: ServedApp, expected: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if _points(api) >= expected:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{_points(api)} points after {timeout_s} s, expected {expected}")


def test_a_watcher_whose_key_may_not_create_the_collection_is_told_it_is_missing(
    orthanc: Orthanc,  # noqa: F811
    served: tuple[ServedApp, Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reproduced first: a typo in --collection with an ingest key ended with "refused the
    request (403: ...); give a key with the right role", as if the key were wrong."""
    api, _ = served
    monkeypatch.setenv("RADSEARCH_URL", api.url)
    monkeypatch.setenv("RADSEARCH_API_KEY", INGEST_KEY)
    argv = ["--data-dir", str(tmp_path / "watcher"), "watch", orthanc.dicomweb, "--collection", "ww"]
    assert main([*argv, "--once"]) == 2
    err = capsys.readouterr().err
    assert f"collection 'ww' does not exist on the radsearch server at {api.url}" in err, err
    assert "create it with an admin key (radsearch collections create ww" in err, err
    assert INGEST_KEY not in err
    assert httpx.get(f"{api.url}/v1/collections/ww", headers={"X-API-Key": READER_KEY}).status_code == 404


def test_a_watcher_through_a_server_reconciles_by_a_job_of_the_server(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through a server the pass is the server's own (an owner ingest job of the PACS with prune):
    the deleted instance's points go there too."""
    files = _files(archive)
    for path in files:
        orthanc.upload(path.read_bytes())
    settings = Settings(
        data_dir=tmp_path / "server",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        dicomweb=DicomwebSettings(url=orthanc.dicomweb),
    )
    with ServedApp(settings) as api:
        monkeypatch.setenv("RADSEARCH_URL", api.url)
        argv = ["--data-dir", str(tmp_path / "watcher"), "watch", orthanc.dicomweb, "--collection", "s"]
        assert main([*argv, "--once", "--json"]) == 0, capsys.readouterr().err
        assert _last_json(capsys.readouterr().out)["delivered"] == len(files)
        before = httpx.get(f"{api.url}/v1/collections/s", timeout=30).json()["points"]
        gone = orthanc.get("/instances")[0]
        frames = int(orthanc.get(f"/instances/{gone}/tags?simplify").get("NumberOfFrames") or 1)
        assert httpx.delete(f"{orthanc.url}/instances/{gone}", timeout=30).status_code == 200
        time.sleep(0.05)
        assert main([*argv, "--once", "--json", "--reconcile-every", "0.01"]) == 0
        assert _last_json(capsys.readouterr().out)["reconciled"] == 1
        jobs = httpx.get(f"{api.url}/v1/ingest-jobs", timeout=30).json()["data"]
        assert jobs and jobs[0]["options"]["prune"] is True
        with httpx.Client(base_url=api.url, timeout=30) as client:
            job = wait_api_job(client, jobs[0]["id"], timeout_s=60)
        assert job["state"] == "done", job
        after = httpx.get(f"{api.url}/v1/collections/s", timeout=30).json()["points"]
    assert after == before - frames


def test_watch_through_a_server_survives_a_kill(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    served: tuple[ServedApp, Settings],
    tmp_path: Path,
) -> None:
    api, _ = served
    files = _files(archive)
    first, during, after = files[:1], files[1:4], files[4:6]
    log = tmp_path / "watch.log"
    watcher = _start_watcher(api, orthanc.dicomweb, tmp_path / "watcher", log)
    try:
        # The watcher writes its cursor once it has read the (empty) feed; the server's encoder is
        # loaded by a first search: what is timed is the path of one new instance.
        deadline = time.monotonic() + 60
        while not list((tmp_path / "watcher" / "watch").glob("*.json")):
            assert watcher.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with first[0].open("rb") as fh:
            warm = httpx.post(
                f"{api.url}/v1/collections/w/search/image",
                headers={"X-API-Key": READER_KEY},
                files={"file": ("q.dcm", fh)},
                timeout=60,
            )
        assert warm.status_code == 200
        orthanc.upload(first[0].read_bytes())
        took = _wait_for_points(api, _frames(first), 10.0)
        # Searchable: the uploaded file's own point comes first.
        with first[0].open("rb") as fh:
            found = httpx.post(
                f"{api.url}/v1/collections/w/search/image",
                headers={"X-API-Key": READER_KEY},
                files={"file": ("q.dcm", fh)},
                timeout=60,
            )
        assert found.status_code == 200 and found.json()["hits"][0]["score"] > 0.999
        print(f"\nwatch: new instance searchable after {took:.2f} s")

        # Killed outright (no chance to save anything), instances arrive while it is down.
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(timeout=10)
        for path in during:
            orthanc.upload(path.read_bytes())
        watcher = _start_watcher(api, orthanc.dicomweb, tmp_path / "watcher", log)
        _wait_for_points(api, _frames(first + during), 30.0)
        for path in after:
            orthanc.upload(path.read_bytes())
        _wait_for_points(api, _frames(first + during + after), 30.0)
        time.sleep(1.0)  # anything delivered twice would have landed by now
        assert _points(api) == _frames(first + during + after)  # nothing missed, nothing doubled
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=30)
    assert watcher.returncode == 0, log.read_text()
    (cursor_file,) = [
        p for p in (tmp_path / "watcher" / "watch").glob("*.json") if "-reconciled" not in p.name
    ]
    cursor = json.loads(cursor_file.read_text())
    assert cursor["last"] == orthanc.get("/changes?limit=0")["Last"]


def test_watch_by_qido_for_servers_without_a_change_feed(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = _files(archive)[:3]
    for path in files[:2]:
        orthanc.upload(path.read_bytes())
    data = str(tmp_path / "data")
    # a source with a since of its own: the next poll's day replaces it, not a second since
    source_uri = f"{orthanc.dicomweb}?since=2000-01-01"
    argv = ["--data-dir", data, "watch", source_uri, "--collection", "q", "--feed", "qido"]
    assert main([*argv, "--once", "--json"]) == 0
    assert _last_json(capsys.readouterr().out)["delivered"] == 2
    assert main([*argv, "--once", "--json"]) == 0
    assert _last_json(capsys.readouterr().out)["delivered"] == 0
    with open_catalog(Settings(data_dir=Path(data)), owner="test") as catalog:
        assert catalog.index.count("q") == _frames(files[:2])

    # The poll logic itself, its day held back (the demo's studies are dated in the past):
    # what was delivered is not delivered again, a new instance is, the cursor survives a restart.
    from core.config import DicomwebSettings
    from ingest.sources.dicomweb import DicomwebSource
    from ingest.watch import DateCursor, follow_qido

    source = DicomwebSource(orthanc.dicomweb, DicomwebSettings(), hash_key=b"k", max_object_bytes=1 << 30)
    cursor = DateCursor(tmp_path / "qido.json")
    delivered: list[str] = []

    def run() -> int:
        stats = follow_qido(
            lambda since: source.list(),
            cursor,
            lambda refs: delivered.extend(r.key for r in refs),
            once=True,
            today=lambda: "19000101",
        )
        return stats.delivered

    assert run() == 2 and run() == 0
    orthanc.upload(files[2].read_bytes())
    assert run() == 1 and len(set(delivered)) == len(delivered) == 3
    assert cursor.load()[0] == "19000101" and len(cursor.load()[1]) == 3


def _watch_away_pacs(data: Path, *extra: str) -> subprocess.Popen[str]:
    """`radsearch watch` of a PACS nothing listens for (port 1), with ``extra`` options."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), "watch"]
        + ["dicomweb+http://127.0.0.1:1/dicom-web", "--collection", "w", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _wait_for_retry(watcher: subprocess.Popen[str]) -> None:
    """Until the watcher has logged its first failed poll (it then waits out the interval)."""
    assert watcher.stderr is not None
    line = watcher.stderr.readline()
    while "retrying in" not in line:
        assert line, "the watcher ended before its first poll"
        line = watcher.stderr.readline()


def test_a_watcher_hears_a_stop_at_once_and_a_second_one_ends_it(tmp_path: Path) -> None:
    """Found in the walkthrough: a second signal (Ctrl-C twice, or `timeout` then Ctrl-C) reached
    the signal handler while it held the stop event's lock, and the watcher hung for good; a single
    SIGTERM was heard only once the poll interval (here 60 s) was over."""
    watcher = _watch_away_pacs(tmp_path / "data", "--interval", "60")
    try:
        _wait_for_retry(watcher)
        started = time.monotonic()
        watcher.send_signal(signal.SIGTERM)
        out, _ = watcher.communicate(timeout=10)
        assert watcher.returncode == 0 and time.monotonic() - started < 5
        assert out.strip() == "watch: 0 instances delivered, cursor at 0, 0 reconcile passes"
    finally:
        watcher.kill()
        watcher.communicate()
    watcher = _watch_away_pacs(tmp_path / "data", "--interval", "60")
    try:
        _wait_for_retry(watcher)
        for _ in range(3):  # a burst, as a hurried operator sends it
            watcher.send_signal(signal.SIGINT)
            time.sleep(0.01)
        _, err = watcher.communicate(timeout=10)  # it ends: interrupted (130), or killed by the burst's last
        assert watcher.returncode in (130, -signal.SIGINT), err
    finally:
        watcher.kill()
        watcher.communicate()


def test_watch_once_ends_with_the_error_when_the_pacs_is_away(tmp_path: Path) -> None:
    """Found in the walkthrough: `watch --once` (what cron runs) retried an unreachable PACS for
    good; bad --interval and --orthanc-url values were taken."""
    watcher = _watch_away_pacs(tmp_path / "data", "--once", "--interval", "0")
    try:
        out, err = watcher.communicate(timeout=60)
    finally:  # a watcher that retries for good must not outlive the test
        watcher.kill()
        watcher.communicate()
    assert watcher.returncode == 1, err
    assert (
        err.splitlines()[-1]
        == "radsearch: error: cannot reach Orthanc at http://127.0.0.1:1: ConnectionError"
    )
    assert err.count("retrying in") == 2  # three polls in all
    for option, value in (("--interval", "-5"), ("--interval", "nan"), ("--orthanc-url", "orthanc:8042")):
        refused = _watch_away_pacs(tmp_path / "data", "--once", option, value)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 2 and f"argument {option}:" in err, err
