"""The command line through a serving owner: `radsearch serve` owns a data dir, and CLI
subprocesses on that data dir (or with ``--url``) go through its HTTP API, printing exactly what the
same commands print when they open an equivalent store themselves (run in process here)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image
from pydantic import SecretStr

from core.catalog import Catalog, CollectionBusy
from core.config import RuntimeSettings, SecuritySettings, Settings
from core.encoders.registry import resolve_spec
from core.index.edge import EdgeIndex
from core.jobs import JobKind, JobSpec
from core.jobs.memory_store import MemoryJobStore
from core.jobs.redis_store import open_job_store
from radsearch.commands.common import LABELS_KEPT
from radsearch.commands.main import main
from search_api.backfill_jobs import JobProgress, OwnerJobRunner
from tests.conftest import free_port, wait_ready
from tests.workers.conftest import store_process_ids

HASH_KEY = "through-server-test"
TEMPLATE = "{modality}/{anatomy}/{file}"
INGEST_KEY = "rs_through-server-ingest-key"
_TIMING = re.compile(r"\(\d+\.\d objects/s\)")


def _images(root: Path) -> Path:
    """Ten distinct smooth images (no two score alike) and one file that is not an image."""
    for i in range(10):
        modality, anatomy = ("CT", "chest") if i % 2 else ("MR", "brain")
        low = np.random.default_rng(100 + i).random((6, 6)) * 255
        image = Image.fromarray(low.astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
        path = root / modality / anatomy / f"img_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    (root / "bad.png").write_bytes(b"not an image")
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    return {**env, "RADSEARCH_SECURITY__HASH_KEY": HASH_KEY, "RADSEARCH_RUNTIME__DEVICE": "cpu", **extra}


def _serve(data: Path, port: int, **extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "radsearch", "--data-dir", str(data), "serve", "--port", str(port)]
    return subprocess.Popen(command, env=_env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass(frozen=True)
class World:
    images: Path
    direct: Path  # data dir the in-process commands open themselves
    served: Path  # data dir owned by the open `radsearch serve`
    url: str
    keyed_url: str  # a server with API keys (no local folders)
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("through-server")
    images = _images(root / "images")
    ports = free_port(), free_port()
    keys = json.dumps(
        [{"name": "ingest-bot", "role": "ingest", "sha256": hashlib.sha256(INGEST_KEY.encode()).hexdigest()}]
    )
    servers = [
        _serve(root / "served", ports[0]),
        _serve(root / "keyed", ports[1], RADSEARCH_SECURITY__API_KEYS=keys),
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            wait_ready(url)
        yield World(images, root / "direct", root / "served", urls[0], urls[1], root)
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            proc.wait(timeout=30)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def _direct(world: World, *args: str) -> Run:
    """A command in this process, opening the store of ``world.direct`` itself."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("RADSEARCH_")]:
            mp.delenv(name)
        mp.setenv("RADSEARCH_SECURITY__HASH_KEY", HASH_KEY)
        mp.setenv("RADSEARCH_RUNTIME__DEVICE", "cpu")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--data-dir", str(world.direct), *args])
    return Run(code, out.getvalue(), err.getvalue())


def _cli(data: Path, *args: str, **env: str) -> Run:
    """A ``radsearch`` subprocess on ``data``."""
    done = subprocess.run(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def _served(world: World, *args: str) -> Run:
    return _cli(world.served, *args)


def _in_parallel(*calls: Callable[[], Run]) -> list[Run]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def _without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


def _hits_without_times(out: str) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = json.loads(out)["hits"]
    return [{**hit, "payload": _without(hit["payload"], "ingested_at")} for hit in hits]


def test_ingest_through_the_serving_owner_prints_what_direct_ingest_prints(world: World) -> None:
    args = ("ingest", str(world.images), "--collection", "chest", "--path-template", TEMPLATE)
    direct, served = _direct(world, *args, "--json"), _served(world, *args, "--json")
    assert (direct.code, served.code) == (0, 0), served.err
    direct_summary, served_summary = json.loads(direct.out), json.loads(served.out)
    assert list(served_summary) == [
        "collection",
        "objects",
        "frames_indexed",
        "skipped",
        "relabelled",
        "labels_kept",
        "failed",
        "quarantined",
        "errors",
        "quarantined_items",
        "deleted",
        "deleted_items",
        "manifest_unmatched",
        "manifest_unmatched_keys",
        "template_unmatched",
        "template_unmatched_keys",
        "modality_conflicts",
        "modality_conflict_values",
        "accept_burned_in",
        "seconds",
    ]
    assert _without(served_summary, "seconds") == _without(direct_summary, "seconds")
    assert (served_summary["frames_indexed"], served_summary["failed"]) == (10, 1)
    # the file beside the folders has not the template's layout: no labels from it, and said so
    assert (served_summary["template_unmatched"], served_summary["template_unmatched_keys"]) == (
        1,
        ["bad.png"],
    )
    info = httpx.get(f"{world.url}/v1/collections/chest").json()
    assert info["points"] == 10 and info["indexing"]["status"] == "green"

    # a second run, as text: everything unchanged is skipped, the bad file listed again
    direct, served = _direct(world, *args), _served(world, *args)
    assert (direct.code, served.code) == (0, 0)
    assert _TIMING.sub("", served.out) == _TIMING.sub("", direct.out)
    assert "10 unchanged skipped, 0 relabelled" in served.out and "failed bad.png" in served.out
    # without the template: the labels it gave stay, and both say so
    direct, served = _direct(world, *args[:-2]), _served(world, *args[:-2])
    assert _TIMING.sub("", served.out) == _TIMING.sub("", direct.out)
    assert f"10 {LABELS_KEPT}" in served.out

    # --detach prints the owner's job id; `jobs show` reads the job from the server
    detached = _served(world, *args, "--detach")
    job_id = detached.out.strip()
    assert detached.code == 0 and re.fullmatch(r"[0-9a-f-]{36}", job_id), detached.out
    deadline = time.monotonic() + 30
    while httpx.get(f"{world.url}/v1/ingest-jobs/{job_id}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    shown = _served(world, "jobs", "show", job_id, "--json")
    job = json.loads(shown.out)
    assert shown.code == 0 and job["executor"] == "owner" and job["summary"]["skipped"] == 10


def test_alias_list_and_search_by_alias_print_what_direct_mode_prints(world: World) -> None:
    direct, served = (
        _direct(world, "collections", "alias", "current", "chest"),
        _served(world, "collections", "alias", "current", "chest"),
    )
    assert (direct.code, served.code, served.out) == (0, 0, "current -> chest\n") and direct.out == served.out

    query = str(world.images / "MR" / "brain" / "img_4.png")
    commands = [
        ("collections", "list"),
        ("collections", "list", "--json"),
        ("search", query, "--collection", "current", "-k", "4"),
        ("search", query, "--collection", "current", "--modality", "MR", "-k", "3", "--json"),
        ("search", query, "--collection", "current", "--group-by", "object", "-k", "3", "--group-size", "1"),
        ("search", query, "--collection", "current", "--roi", "8,8,32,32", "-k", "3", "--json"),
        ("search", query, "--collection", "current", "--exclude", "same-patient"),
        ("search", query, "--collection", "current", "--roi", "40,40,32,32"),
    ]
    served_runs = _in_parallel(*[partial(_served, world, *command) for command in commands])
    direct_runs = [_direct(world, *command) for command in commands]
    for command, direct, served in zip(commands[:-2], direct_runs, served_runs, strict=False):
        assert (direct.code, served.code) == (0, 0), (command, served.err)
        if command[-1] == "--json" and command[0] == "search":
            assert _hits_without_times(served.out) == _hits_without_times(direct.out)
        elif command[-1] == "--json":  # two stores: their collections were created at different times
            direct_rows, served_rows = (
                [_without(row, "created_at") for row in json.loads(run.out)["collections"]]
                for run in (direct, served)
            )
            assert direct_rows == served_rows
        else:
            assert served.out == direct.out, command
    # a PNG has no patient to exclude, and the region must fit in the 64x64 frame: refused alike
    for direct, served in zip(direct_runs[-2:], served_runs[-2:], strict=True):
        assert (direct.code, direct.out) == (served.code, served.out) == (2, ""), served.err
        assert direct.err == served.err, (direct.err, served.err)
    assert "chest                    baseline       dim=512   points=10" in served_runs[0].out
    # the command line's JSON is the API's, field for field
    assert json.loads(served_runs[1].out) == httpx.get(f"{world.url}/v1/collections").json()
    api_aliases = httpx.get(f"{world.url}/v1/aliases").json()
    assert api_aliases == {"aliases": [{"alias": "current", "collection": "chest"}]}
    for run in (
        _direct(world, "collections", "aliases", "--json"),
        _served(world, "collections", "aliases", "--json"),
    ):
        assert (run.code, json.loads(run.out)) == (0, api_aliases), run.err
    table = served_runs[2].out.splitlines()
    assert len(table) == 5 and "MR/brain/img_4.png#0" in table[1] and " 1.000 " in table[1]
    hits = json.loads(served_runs[3].out)["hits"]
    assert len(hits) == 3 and {h["payload"]["modality"] for h in hits} == {"MR"}


def test_search_by_text_here_and_through_the_server(world: World) -> None:
    """`radsearch search --text` (new in session 25; text search was HTTP-only): here, the hits are
    the collection's points ranked by cosine to the encoder's text vector; through the server, what
    the server's own text search answers. Usage errors read the same in both modes."""
    create = ("collections", "create", "words", "--encoder", "clip-vit-b16", "--weights", "random")
    ingest = ("ingest", str(world.images), "--collection", "words", "--path-template", TEMPLATE)
    for command in (create, ingest):
        direct, served = _direct(world, *command), _served(world, *command)
        assert (direct.code, served.code) == (0, 0), (command, direct.err, served.err)
    words = ("search", "--text", "a chest CT", "--collection", "words", "--json")

    direct = _direct(world, *words, "-k", "4")
    assert direct.code == 0, direct.err
    hits = json.loads(direct.out)["hits"]
    settings = Settings(data_dir=world.direct, runtime=RuntimeSettings(device="cpu"))
    from core.encoders.registry import load_encoder

    text = load_encoder(resolve_spec("clip-vit-b16"), settings, weights="random").embed_text(["a chest CT"])[
        0
    ]
    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        points = list(index.scroll("words", with_vectors=True))
    finally:
        index.close()
    scores = {point.id: float(np.dot(text, point.vector)) for point in points}  # type: ignore[arg-type]
    assert len(points) == 10 and [h["id"] for h in hits] == sorted(scores, key=scores.__getitem__)[::-1][:4]
    assert np.allclose([h["score"] for h in hits], [scores[h["id"]] for h in hits], atol=0.02)

    filtered = ("--modality", "CT", "--group-by", "object", "--group-size", "1", "-k", "3")
    served = _served(world, *words, *filtered)
    answer = httpx.post(
        f"{world.url}/v1/collections/words/search",
        json={
            "text": "a chest CT",
            "filter": {"modality": ["CT"]},
            "group_by": "object",
            "group_size": 1,
            "limit": 3,
        },
    ).json()
    assert served.code == 0, served.err
    assert json.loads(served.out)["groups"] == [
        {"key": g["key"], "hits": [{k: h[k] for k in ("id", "score", "payload")} for h in g["hits"]]}
        for g in answer["groups"]
    ]
    assert len(answer["groups"]) == 3 and all(
        g["hits"][0]["payload"]["modality"] == "CT" for g in answer["groups"]
    )

    query = str(world.images / "MR" / "brain" / "img_4.png")
    refused = {
        ("search", "--collection", "words"): "search by an image file or by --text: give one of them",
        ("search", query, "--text", "x", "--collection", "words"): "give one of them",
        (
            "search",
            "--text",
            "x",
            "--roi",
            "1,1,8,8",
            "--collection",
            "words",
        ): "--roi goes with a query image",
        (
            "search",
            "--text",
            "x",
            "--exclude",
            "same-patient",
            "--collection",
            "words",
        ): "--exclude goes with",
        ("search", "--text", " ", "--collection", "words"): "give the words to search for",
    }
    for command, message in refused.items():  # the parser's refusals exit, so: subprocesses
        direct, served = _cli(world.direct, *command), _served(world, *command)
        assert (direct.code, served.code, direct.out, served.out) == (2, 2, "", ""), command
        assert message in direct.err and direct.err == served.err, (command, direct.err, served.err)
    # an encoder without a text tower, named
    for run in (_direct, _served):
        assert run(world, *create[:2], "imageonly", "--encoder", "baseline").code == 0
        image_only = run(world, "search", "--text", "x", "--collection", "imageonly")
        assert image_only.code == 2 and "'baseline' has no text tower" in image_only.err, image_only.err


def test_backfill_through_the_server_follows_its_job_and_prints_the_same_summary(world: World) -> None:
    for command in (
        ("collections", "create", "copy", "--encoder", "baseline", "--quantization", "none"),
        ("collections", "backfill", "copy", "--from", "chest", "--json"),
        ("collections", "backfill", "copy", "--from", "chest"),
    ):
        direct, served = _direct(world, *command), _served(world, *command)
        assert (direct.code, served.code) == (0, 0), (command, served.err)
        assert served.out == direct.out, command
    assert served.out == "copy: 10 objects from chest, 0 frames indexed, 10 already present, 0 failed\n"
    summary = json.loads(_direct(world, "collections", "backfill", "copy", "--from", "chest", "--json").out)
    assert (summary["collection"], summary["from"], summary["skipped"]) == ("copy", "chest", 10)
    # a target not created yet: how to create it (walkthrough), the same here and through the server
    missing = [
        run(world, "collections", "backfill", "fresh", "--from", "chest") for run in (_direct, _served)
    ]
    assert [m.code for m in missing] == [2, 2] and missing[0].err == missing[1].err, missing
    assert missing[0].err == (
        "radsearch: error: collection 'fresh' does not exist: a backfill fills a collection created "
        "first with the encoder wanted (radsearch collections create fresh --encoder NAME, or POST "
        "/v1/collections)\n"
    )


def test_eval_through_the_server_prints_what_direct_eval_prints(world: World, tmp_path: Path) -> None:
    manifest = tmp_path / "splits.csv"
    keys = sorted(p.relative_to(world.images).as_posix() for p in world.images.rglob("img_*.png"))
    manifest.write_text(
        "key,split\n" + "".join(f"{k},{'test' if i % 3 == 0 else 'train'}\n" for i, k in enumerate(keys))
    )
    ingest = ("ingest", str(world.images), "--collection", "evalset", "--path-template", TEMPLATE)
    for run in (
        _direct(world, *ingest, "--manifest", str(manifest)),
        _served(world, *ingest, "--manifest", str(manifest)),
    ):
        assert run.code == 0, run.err
    for command in (("eval", "--collection", "evalset", "--json"), ("eval", "--collection", "evalset")):
        direct, served = _direct(world, *command), _served(world, *command)
        assert (direct.code, served.code) == (0, 0), served.err
        if "--json" in command:
            assert _without(json.loads(served.out), "seconds") == _without(json.loads(direct.out), "seconds")
            assert json.loads(served.out)["n_queries"] == 4
        else:
            assert served.out == direct.out
    missing = _served(world, "eval", "--collection", "nope")
    assert missing.code == 2 and missing.err == "radsearch: error: collection 'nope' does not exist\n"


def _redis_job_store(settings: Settings) -> Any:
    store = open_job_store(settings.redis.url, settings.celery)
    try:
        store.client.ping()
    except redis.exceptions.RedisError:
        pytest.fail("Redis is not running on the default URL (.ci/run starts it)")
    return store


def test_drop_is_refused_while_aliased_or_written_then_allowed(world: World) -> None:
    # the collection and alias of the previous tests, made here too when run alone
    direct_aliases = json.loads(_direct(world, "collections", "aliases", "--json").out)["aliases"]
    if "current" not in {item["alias"] for item in direct_aliases}:
        _direct(world, "ingest", str(world.images), "--collection", "chest", "--json")
        _direct(world, "collections", "alias", "current", "chest")
    if httpx.get(f"{world.url}/v1/aliases").json()["aliases"] == []:
        _served(world, "ingest", str(world.images), "--collection", "chest", "--json")
        _served(world, "collections", "alias", "current", "chest")

    direct, served = (
        _direct(world, "collections", "drop", "chest"),
        _served(world, "collections", "drop", "chest"),
    )
    aliased = (
        "radsearch: error: collection 'chest' is the target of alias current; "
        "switch or delete the alias first\n"
    )
    assert (direct.code, direct.err, served.code, served.err) == (2, aliased, 2, aliased)
    typo = "radsearch: error: collection 'chets' does not exist (did you mean 'chest'?)\n"
    unalias_typo = "radsearch: error: alias 'curent' not found (did you mean 'current'?)\n"
    for run in (_direct, _served):
        assert (run(world, "collections", "drop", "chets").err, run.__name__) == (typo, run.__name__)
        assert run(world, "collections", "unalias", "curent").err == unalias_typo
        assert run(world, "collections", "unalias", "current").out == "removed alias current\n"

    # an unfinished Celery ingest job in Redis writes to it
    store = _redis_job_store(Settings())
    job_id = store.create(JobKind.INGEST, JobSpec(source="s3://nowhere/prefix/", collections=("chest",)))
    try:
        direct = _direct(world, "collections", "drop", "chest")
        served = _served(world, "collections", "drop", "chest")
    finally:
        store.fail(job_id, "stopped by the test")
    written = (
        f"radsearch: error: collection 'chest' is being written by ingest job {job_id}; "
        "drop it once that has finished\n"
    )
    assert (direct.code, direct.err, served.code, served.err) == (2, written, 2, written)
    # the job failed: nothing writes any more
    for run in (_direct, _served):
        dropped = run(world, "collections", "drop", "chest")
        assert (dropped.code, dropped.out[:40]) == (0, "dropped chest: moved to the trash until ")


def test_explicit_url_and_a_wrong_api_key(world: World) -> None:
    elsewhere = world.root / "elsewhere"  # a data dir nobody owns: only --url leads to the server
    keyed = world.root / "keyed"
    explicit, wrong_key, local_folder = _in_parallel(
        partial(_cli, elsewhere, "--url", world.url, "collections", "list", "--json"),
        partial(_cli, keyed, "collections", "list", RADSEARCH_API_KEY="rs_wrong"),
        partial(_cli, keyed, "ingest", str(world.images), "--collection", "x", RADSEARCH_API_KEY=INGEST_KEY),
    )
    listed = httpx.get(f"{world.url}/v1/collections").json()
    assert explicit.code == 0 and json.loads(explicit.out) == listed
    assert not (elsewhere / "index").exists()

    assert wrong_key.code == 2 and "Traceback" not in wrong_key.err
    assert wrong_key.err == (
        f"radsearch: error: the radsearch server at {world.keyed_url} refused the request (401: missing or "
        "invalid credentials); give a key with the right role in RADSEARCH_API_KEY\n"
    )
    assert local_folder.code == 2 and local_folder.err == (
        "radsearch: error: this server reads a source folder on its own disk only under "
        "RADSEARCH_API__INGEST_ROOTS (or while the API is open, without keys, to loopback clients); "
        "give an s3:// URI\n"
    )


def test_drop_waits_for_an_owner_run_job(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu"),
        security=SecuritySettings(hash_key=SecretStr(HASH_KEY)),
    )
    index = EdgeIndex(settings.index_dir, settings.store)
    catalog = Catalog(index, settings)
    catalog.create("busy", resolve_spec("baseline"))
    runner = OwnerJobRunner(catalog, settings, MemoryJobStore())
    release = threading.Event()

    def work(progress: JobProgress) -> dict[str, Any]:
        progress.plan(objects=1, batches=0)
        release.wait(30)
        return {"objects": 1}

    try:
        job_id = runner.submit("ingest", JobSpec(source="/archive", collections=("busy",)), work)
        with pytest.raises(CollectionBusy, match=f"being written by ingest job {job_id}; drop it once"):
            runner.drop("busy")
        release.set()
        deadline = time.monotonic() + 10
        while (job := runner.job(job_id)) is None or job.state.value != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job.summary == {"objects": 1} and job.to_dict()["executor"] == "owner"
        runner.drop("busy")
        assert not index.collection_exists("busy")
    finally:
        release.set()
        runner.close()
        index.close()


def test_owner_ingest_reads_a_local_folder_only_under_the_ingest_roots(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from core.config import ApiKeyEntry, ApiSettings, RedisSettings
    from search_api.app import create_app

    allowed = _images(tmp_path / "allowed" / "archive")
    outside = _images(tmp_path / "outside")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    digest = hashlib.sha256(INGEST_KEY.encode()).hexdigest()
    settings = Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu"),
        security=SecuritySettings(
            hash_key=SecretStr(HASH_KEY), api_keys=[ApiKeyEntry(name="bot", role="ingest", sha256=digest)]
        ),
        api=ApiSettings(ingest_roots=[tmp_path / "allowed"]),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),  # nothing listens: Redis is down
    )
    index = EdgeIndex(settings.index_dir, settings.store)
    headers = {"X-API-Key": INGEST_KEY}
    try:
        with TestClient(create_app(settings, index=index)) as client:

            def submit(source: str, **extra: object) -> Any:
                body = {"executor": "owner", "source": source, "collections": ["roots"], **extra}
                return client.post("/v1/ingest-jobs", json=body, headers=headers)

            for source in (
                str(outside),
                str(allowed / "escape"),
                "/etc",
                str(allowed / ".." / ".." / "outside"),
            ):
                refused = submit(source)
                assert (
                    refused.status_code == 400 and "RADSEARCH_API__INGEST_ROOTS" in refused.json()["detail"]
                )
            missing = submit(str(allowed / "missing"))
            assert missing.json()["detail"] == "the source folder does not exist or is not a folder"
            assert submit("relative/path").status_code == 422
            outside_manifest = submit(str(allowed), manifest=str(outside / "bad.png"))
            assert outside_manifest.status_code == 400
            assert not index.collection_exists("roots")  # nothing created by a refused job

            created = submit(str(allowed), path_template=TEMPLATE)
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            deadline = time.monotonic() + 30
            while (job := client.get(f"/v1/ingest-jobs/{job_id}", headers=headers).json())["state"] != "done":
                assert job["state"] != "failed" and time.monotonic() < deadline, job
                time.sleep(0.1)
            assert job["executor"] == "owner" and job["summary"]["frames_indexed"] == 10
            assert job["summary"]["errors"] == [{"key": "bad.png", "reason": "unrecognised file format"}]
            listed = client.get("/v1/ingest-jobs", headers=headers)  # Redis down: the owner's jobs alone
            assert listed.status_code == 200 and [j["id"] for j in listed.json()["data"]] == [job_id]
    finally:
        index.close()


def test_prune_through_the_serving_owner_as_run_here(world: World) -> None:
    """``ingest --prune`` through the serving owner (its ``POST /v1/ingest-jobs`` owner job): the
    dry run prints the diff, a prune beyond --max-delete-fraction exits 2 as the command run here
    would (the job's 409), --force deletes and lists the keys."""
    folder = _images(world.root / "prune-archive")
    args = ("ingest", str(folder), "--collection", "pruned", "--json")
    assert _served(world, *args).code == 0
    (folder / "MR" / "brain" / "img_0.png").unlink()
    (folder / "CT" / "chest" / "img_1.png").unlink()  # 2 of 10 indexed objects: beyond 0.1
    gone = ["CT/chest/img_1.png", "MR/brain/img_0.png"]

    dry = _served(world, *args, "--prune", "--dry-run")
    diff = json.loads(dry.out.strip().splitlines()[-1])["diffs"][0]
    assert dry.code == 0 and diff["deleted_items"] == gone and "2 of the 10" in diff["would_refuse"]
    refused = _served(world, *args, "--prune")
    assert refused.code == 2 and "2 of the 10 objects" in refused.err, refused.err
    forced = _served(world, *args, "--prune", "--force")
    summary = json.loads(forced.out.strip().splitlines()[-1])
    assert forced.code == 0 and summary["deleted_items"] == gone
    assert httpx.get(f"{world.url}/v1/collections/pruned").json()["points"] == 8


def test_a_command_waits_while_the_server_replaces_its_store_process(tmp_path: Path) -> None:
    """The server's store process is killed, and so is each new one for 3 s: a search through the
    server meanwhile waits (503 ``store_unavailable`` with Retry-After, sent again) and prints its
    hits, rather than failing with "retry in a few seconds"."""
    data, port = tmp_path / "data", free_port()
    server = _serve(data, port, RADSEARCH_STORE__SEARCH_REPLICAS="0")
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        images = _images(tmp_path / "images")
        assert _cli(data, "ingest", str(images), "--collection", "c", "--encoder", "baseline").code == 0
        query = str(images / "CT" / "chest" / "img_1.png")
        results: list[Run] = []
        argv = ("search", query, "--collection", "c", "-k", "3", "--json")
        search = threading.Thread(target=lambda: results.append(_cli(data, *argv)))
        killed: set[int] = set()
        until = time.monotonic() + 3
        while time.monotonic() < until:
            for pid in set(store_process_ids(server.pid)) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                if not search.is_alive() and not results:
                    search.start()
            time.sleep(0.02)
        search.join(timeout=60)
        (run,) = results
        assert run.code == 0, run.err
        assert json.loads(run.out)["hits"][0]["payload"]["key"] == "CT/chest/img_1.png"
        assert "is replacing its store process; trying again in 2 s" in run.err
        assert len(killed) >= 2
    finally:
        server.terminate()
        server.wait(timeout=30)
