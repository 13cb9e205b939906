"""The Quick start as a newcomer runs it: `radsearch demo` indexes, reports P@k, then serves and owns
the store; the README's curl examples answer, and the CLI goes through the demo server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.ownership import current_owner
from tests.conftest import free_port, wait_ready

REPO = Path(__file__).parents[2]


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    return subprocess.run(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_demo_serves_the_readme_examples_and_owns_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), "demo", "--per-class", "3"]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert demo.poll() is None, demo.communicate()[0]
            assert time.monotonic() < deadline, "the demo never served"
            try:
                if httpx.get(f"{api}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        owner = current_owner(data / "index")
        assert owner is not None and (owner.pid, owner.kind, owner.url) == (demo.pid, "demo", api)

        # The README's three examples, as written there.
        query = data / "demo-archive/dicom/MR/brain/tumor/brain_tumor_000.dcm"
        with query.open("rb") as fh:
            by_image = httpx.post(
                f"{api}/v1/collections/demo/search/image",
                files={"file": (query.name, fh)},
                data={"filter": json.dumps({"modality": ["MR"]}), "limit": "5"},
            )
        assert by_image.status_code == 200, by_image.text
        hits = by_image.json()["hits"]
        assert len(hits) == 5 and {h["payload"]["modality"] for h in hits} == {"MR"}
        by_point = httpx.post(
            f"{api}/v1/collections/demo/search",
            json={
                "point_id": hits[1]["id"],
                "filter": {"modality": ["MR"], "anatomy": ["brain"]},
                "limit": 5,
            },
        )
        assert by_point.status_code == 200, by_point.text
        assert hits[1]["id"] not in {h["id"] for h in by_point.json()["hits"]}
        facets = httpx.get(f"{api}/v1/collections/demo/facets/pathology")
        assert facets.status_code == 200 and facets.json()["counts"]

        # A newcomer's next command, while the demo serves: it goes through the demo's API.
        listed = _cli(data, "collections", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["collections"]
        assert row["name"] == "demo" and row["points"] > 0
        searched = _cli(data, "search", str(query), "--collection", "demo", "--modality", "MR", "-k", "3")
        assert searched.returncode == 0, searched.stderr
        assert "brain_tumor_000.dcm" in searched.stdout.splitlines()[1]
    finally:
        demo.terminate()
        output = demo.communicate(timeout=60)[0]
    assert "micro P@1" in output and "serving on" in output
    assert current_owner(data / "index") is None  # the store is free again once the demo stops


def test_demo_while_a_server_owns_the_store_goes_through_it(tmp_path: Path) -> None:
    """Noticed in session 22: `radsearch demo` while `radsearch serve` owned the data dir wrote the
    archive, then stopped with exit 3 naming the server. It now ingests through the server (a job
    of the owner), asks it for the examples and P@k, and leaves the serving to it: the same figures
    as a demo that owns its store."""
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc=server)
        through = _cli(data, "demo", "--per-class", "3", "--port", str(free_port()))
        assert through.returncode == 0, through.stderr
        assert "--port not used: the demo goes through" in through.stderr  # said, not dropped
        assert f"the server at http://127.0.0.1:{port} serves the demo collection" in through.stdout
        owner = current_owner(data / "index")
        assert owner is not None and owner.pid == server.pid  # the server still owns the store
        hits = httpx.post(
            f"http://127.0.0.1:{port}/v1/collections/demo/search",
            json={"vector": [1.0] + [0.0] * 511, "limit": 3},
        )
        assert hits.status_code == 200 and len(hits.json()["hits"]) == 3, hits.text
        # a smaller demo afterwards: the collection holds its archive, not the earlier one's extra
        smaller = _cli(data, "demo", "--per-class", "2")
        assert smaller.returncode == 0, smaller.stderr
        assert "demo archive: 30 files, 15 classes" in smaller.stdout
        assert "15 gone from the archive deleted" in smaller.stdout
        # the smaller archive's train/test split moves some images: said, as an ingest says it
        assert re.search(r"\d+ unchanged skipped, \d+ relabelled, 0 failed", smaller.stdout), smaller.stdout
        held = httpx.post(
            f"http://127.0.0.1:{port}/v1/collections/demo/points/scroll", json={"limit": 1000}
        ).json()["points"]
        keys = {point["key"] for point in held}
        assert len(keys) == 30 and all(key.rsplit("_", 1)[1][:3] in ("000", "001") for key in keys), keys
    finally:
        server.terminate()
        server.wait(timeout=60)
    here = _cli(tmp_path / "alone", "demo", "--per-class", "3", "--no-serve")
    assert here.returncode == 0, here.stderr

    def quality(output: str) -> str:
        return next(line for line in output.splitlines() if "micro P@1" in line)

    assert quality(through.stdout) == quality(here.stdout)
    shown = [line.split(" — ")[1] for line in through.stdout.splitlines() if line.startswith("query ")]
    assert len(shown) == 4 and all(label.count("/") == 2 and "-/-" not in label for label in shown)
