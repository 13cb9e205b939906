"""``radsearch snapshot`` and ``radsearch collections drop|trash|restore`` against a real
``radsearch serve`` that owns the store (its index in a child process, as deployed), with points
streaming in over its HTTP API while the snapshot is taken; then the same CLI with no server, taking
the store lock itself.

Before (issue 14, item 11): there was no snapshot command at all, and ``collections drop`` /
``DELETE /v1/collections/{name}`` removed the shard at once (rmtree), with nothing to restore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from core.config import StoreSettings
from core.index.base import COLLECTION_NAME_RULE
from core.index.edge import EdgeIndex
from tests.conftest import free_port, wait_ready
from tests.core.test_snapshots import _create

BATCH = 20
DIM = 512  # the baseline encoder's


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    return {**env, "RADSEARCH_SECURITY__HASH_KEY": "snapshot-cli-test", "RADSEARCH_RUNTIME__DEVICE": "cpu"}


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _points(number: int) -> dict[str, Any]:
    vectors = np.random.default_rng(number).normal(size=(BATCH, DIM))
    return {
        "points": [
            {
                "id": str(uuid.UUID(int=number * 1000 + i + 1)),
                "vector": [round(float(v), 6) for v in vectors[i]],
                "payload": {"dataset": f"b{number:04d}", "key": f"b{number:04d}/{i}"},
            }
            for i in range(BATCH)
        ]
    }


def _hits(http: httpx.Client, name: str) -> list[list[tuple[str, float]]]:
    out = []
    for query in np.random.default_rng(7).normal(size=(4, DIM)):
        answer = http.post(f"/v1/collections/{name}/search", json={"vector": query.tolist(), "limit": 10})
        assert answer.status_code == 200, answer.text
        out.append([(h["id"], round(h["score"], 5)) for h in answer.json()["hits"]])
    return out


def _batches(http: httpx.Client, name: str) -> dict[str, int]:
    answer = http.get(f"/v1/collections/{name}/facets/dataset", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    counts: dict[str, int] = answer.json()["counts"]
    return counts


def test_snapshot_drop_and_restore_through_the_serving_owner_then_without_it(tmp_path: Path) -> None:
    """A snapshot taken through the server while batches stream in holds whole batches, exactly
    the count it reports; restored under a new name it answers searches exactly like the original
    cut back to that moment. A drop goes to the trash and comes back with the same points and hits;
    restores onto a taken name are refused (exit 2 / 409). With the server gone, the CLI takes the
    store lock itself and snapshots again."""
    data = tmp_path / "data"
    # The collection is made before the server starts (the baseline catalog entry, no encoder load).
    index = EdgeIndex(data / "index", StoreSettings())
    _create(index, "live", dim=DIM)
    index.close()
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radsearch",
            "--data-dir",
            str(data),
            "serve",
            "--port",
            url.rsplit(":", 1)[1],
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url)
        with httpx.Client(base_url=url, timeout=60) as http:
            for number in range(3):
                assert http.put("/v1/collections/live/points", json=_points(number)).status_code == 200

            stop = threading.Event()
            written: list[int] = []

            def writer() -> None:
                with httpx.Client(base_url=url, timeout=60) as own:
                    number = 3
                    while not stop.is_set():
                        answer = own.put("/v1/collections/live/points", json=_points(number))
                        assert answer.status_code == 200, answer.text
                        written.append(number)
                        number += 1

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                while len(written) < 2:
                    time.sleep(0.01)
                snap = _cli(data, "snapshot", "create", "--collection", "live", "--json")
                mark = len(written)
                while len(written) < mark + 1 and thread.is_alive():
                    time.sleep(0.01)
            finally:
                stop.set()
                thread.join()
            assert snap.returncode == 0, snap.stderr
            manifest = json.loads(snap.stdout)
            [held] = manifest["collections"]
            now = http.get("/v1/collections/live").json()["points"]
            assert 3 * BATCH <= held["points"] < now, (held, now)
            assert held["catalog"]["encoder"]["name"] == "baseline"
            assert (data / "snapshots" / manifest["id"] / "manifest.json").is_file()

            listed = _cli(data, "snapshot", "list", "--json")
            assert [s["id"] for s in json.loads(listed.stdout)["snapshots"]] == [manifest["id"]]

            refused = http.post(f"/v1/snapshots/{manifest['id']}/restore", json={"collection": "live"})
            assert refused.status_code == 409, refused.text
            # the way out in both words: the HTTP field and the CLI option
            assert refused.json()["detail"] == (
                "collection 'live' exists: restore under another name (\"as\", --as NEW_NAME) or replace "
                'it ("force", --force; the one there goes to the trash)'
            )
            # an empty list is not "every collection"; a typo'd name gets the one meant
            empty = http.post("/v1/snapshots", json={"collections": []})
            assert empty.status_code == 400 and "collections is empty" in empty.json()["detail"], empty.text
            typo_create = http.post("/v1/snapshots", json={"collections": ["lvie"]})
            assert typo_create.status_code == 404, typo_create.text
            assert typo_create.json()["detail"] == "collection 'lvie' does not exist (did you mean 'live'?)"
            assert [s["id"] for s in http.get("/v1/snapshots").json()["snapshots"]] == [manifest["id"]]
            restored = _cli(
                data, "snapshot", "restore", manifest["id"], "--collection", "live", "--as", "copy"
            )
            assert restored.returncode == 0, restored.stderr
            assert (
                restored.stdout
                == f"restored live as copy from snapshot {manifest['id']}: {held['points']} points\n"
            )

            batches = _batches(http, "copy")
            assert set(batches.values()) == {BATCH}
            assert sorted(batches) == [f"b{n:04d}" for n in range(len(batches))]
            assert len(batches) * BATCH == held["points"]
            late = [f"b{n:04d}" for n in range(len(batches), written[-1] + 1)]
            cut = http.post("/v1/collections/live/points/delete", json={"filter": {"dataset": late}})
            assert cut.status_code == 200, cut.text
            assert http.get("/v1/collections/live").json()["points"] == held["points"]
            hits = _hits(http, "copy")
            assert hits == _hits(http, "live")

            # drop → trash → restore, through the CLI and the server
            dropped = _cli(data, "collections", "drop", "copy")
            assert dropped.returncode == 0, dropped.stderr
            assert dropped.stdout.startswith("dropped copy: moved to the trash until ")
            assert http.get("/v1/collections/copy").status_code == 404
            trash = json.loads(_cli(data, "collections", "trash", "--json").stdout)["trash"]
            assert [(e["name"], e["points"]) for e in trash] == [("copy", held["points"])]
            back = _cli(data, "collections", "restore", "copy")
            assert back.returncode == 0, back.stderr
            assert http.get("/v1/collections/copy").json()["points"] == held["points"]
            assert _hits(http, "copy") == hits

            # the HTTP answers: the drop says until when; a name taken again is a 409
            gone = http.delete("/v1/collections/copy")
            assert gone.status_code == 200 and gone.json()["trashed"] is True, gone.text
            assert gone.json()["expires_at"] in gone.json()["message"]
            # the name is taken again (by another restore of the snapshot)
            again = http.post(
                f"/v1/snapshots/{manifest['id']}/restore", json={"collection": "live", "as": "copy"}
            )
            assert again.status_code == 200, again.text
            taken = _cli(data, "collections", "restore", "copy")
            assert taken.returncode == 2 and "taken again" in taken.stderr, taken.stderr
            assert http.post("/v1/collections/copy/restore", json={}).status_code == 409
            elsewhere = http.post("/v1/collections/copy/restore", json={"as": "copy2"})
            assert elsewhere.status_code == 200 and elsewhere.json()["points"] == held["points"]
            assert http.post("/v1/snapshots/not-an-id/restore", json={}).status_code == 404
            # a typo'd collection (session 26's walkthrough): the one meant, and what it holds
            typo = _cli(data, "snapshot", "restore", manifest["id"], "--collection", "lvie", "--as", "copy3")
            assert typo.returncode == 2, typo.stderr
            assert "no collection 'lvie' (did you mean 'live'?); it holds live" in typo.stderr
            # a name off the rule: the rule in words, not a regular expression, and not the name
            off_rule = http.post(
                f"/v1/snapshots/{manifest['id']}/restore", json={"collection": "live", "as": "Bad/Name"}
            )
            assert off_rule.status_code == 422
            assert off_rule.json()["error"]["message"] == (
                f"as (body): a collection name must be {COLLECTION_NAME_RULE}"
            )
    finally:
        server.terminate()
        server.wait(timeout=60)

    # no server: the CLI owns the store itself for the copy
    direct = _cli(data, "snapshot", "create", "--json")
    assert direct.returncode == 0, direct.stderr
    second = json.loads(direct.stdout)
    assert sorted(c["name"] for c in second["collections"]) == ["copy", "copy2", "live"]
    points = {c["name"]: c["points"] for c in second["collections"]}
    assert points["live"] == points["copy2"] == held["points"]
    assert sorted(p.name for p in (data / "snapshots").iterdir()) == sorted([manifest["id"], second["id"]])
