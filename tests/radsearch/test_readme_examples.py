"""Every `curl` and `radsearch` example in README.md, run as written against a served demo data dir.

The examples are extracted from the README's ``bash`` blocks (continuation lines and multi-line
quotes joined, ``[--optional]`` parts dropped), the placeholders the README documents under
"Placeholders in the examples" are substituted, and each runs in a shell in README order against
`radsearch serve` started from the README's own serve example, with moto's S3 server standing in
for the README's buckets. A curl example must answer 2xx and a CLI example exit 0, unless the table
below says which status or exit code the README promises for it (the failures it documents: missing
weights, a missing file). An example that cannot run on a CI machine (Docker, GPUs, the paper's
data sets, `make`) is listed with the reason; every table entry must still match an example, so the
tables cannot go stale.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from minio import Minio

from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# Examples the README promises a failure for, by a distinctive part of the example: (HTTP status or
# CLI exit code, why). The reason is the README's own words for the failure.
EXPECTED_FAILURES: dict[str, tuple[int, str]] = {
    "--encoder medclip-vit --weights /models/medclip/pytorch_model.bin": (
        2,
        "weights file not on this machine: one line naming the path",
    ),
    "--collection bmc --encoder biomedclip\n": (2, "no network: the hub weights cannot be had"),
    "--encoder biomedclip --weights /models/biomedclip.safetensors": (2, "weights file not here"),
    "--weights s3://models/biomedclip/open_clip_model.safetensors": (2, "no such object in the bucket"),
    '"encoder": "biomedclip"}': (424, "biomedclip's weights cannot be had offline"),
    "ingest-jobs/<id>": (404, "the job above was refused, so its id names no job"),
    '{"text": "pleural effusion"': (400, "the alias now points at resnet50, which has no text tower"),
    "--text pleural effusion --collection chest": (2, "chest's baseline encoder has no text tower"),
}

# Examples this test does not run, with why; each is exercised elsewhere where it can be.
NOT_RUN: dict[str, str] = {
    "--embeddings embeddings/BiomedCLIPVitB16_224": "the paper's embeddings and data sets are not here",
    "--collection cbmir-biomedclip --compare-exact": "the paper's data sets are not here",
    "--device cuda": "no GPU here (tests/workers run CPU workers)",
    "radsearch worker": "a long-running worker (tests/workers run real ones)",
    "--executor celery": "needs Redis and workers (tests/workers/test_jobs.py)",
    "radsearch jobs requeue": "needs Redis dead letters (tests/workers/test_reliability.py)",
    "radsearch reconcile": "needs Redis and a worker (tests/workers/test_jobs.py)",
    "radsearch serve &": "the scaled-out layout (the served owner here comes from the same command)",
    "radsearch serve\n": "the scaled-out layout against a Qdrant server (none can run here)",
    "$Q/collections": "a Qdrant server's own snapshot API (no Qdrant server can run here)",
    "dicomweb+http://127.0.0.1:8042/dicom-web": "needs an Orthanc (tests/ingest/test_dicomweb_source.py, "
    "tests/radsearch/test_dicomweb_watch.py start one)",
    "dicom-web/servers/radsearch/stow": "needs an Orthanc (tests/search_api/test_dicomweb_routes.py)",
    "search/dicomweb": "needs an Orthanc (tests/search_api/test_dicomweb_routes.py)",
}

# The README's hosts, buckets and files, and what stands in for them here.
SETUP_EXAMPLES = ("radsearch demo [--no-serve]", "radsearch serve --host 127.0.0.1 --port 8000")


@dataclass(frozen=True)
class Example:
    line: int
    text: str  # as in the README, one logical command (continuations joined)
    words: str  # the command as the shell reads it, comments dropped: what the tables match


def readme_examples(markdown: str) -> list[Example]:
    """The `curl` and `radsearch` commands of the README's ``bash`` blocks, in order."""
    examples: list[Example] = []
    in_block = False
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(markdown.splitlines(), start=1):
        if raw.startswith("```"):
            in_block = raw.strip() == "```bash" and not in_block
            pending = []
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        pending.append(raw)
        logical = "\n".join(pending)
        if logical.endswith("\\"):
            continue
        try:
            words = shlex.split(logical.replace("\\\n", " "), comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        pending = []
        command = list(words)
        while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
            command = command[1:]
        piped_into_radsearch = "|" in command and "radsearch" in command
        if command and (command[0] in ("curl", "radsearch") or piped_into_radsearch):
            examples.append(Example(start, logical, " ".join(words)))
    return examples


def _matches(example: Example, needle: str) -> bool:
    return needle in example.words + "\n"


def _expected(example: Example) -> tuple[int, str] | None:
    found = [v for k, v in EXPECTED_FAILURES.items() if _matches(example, k)]
    assert len(found) <= 1, f"README line {example.line} matches several expectations"
    return found[0] if found else None


def _not_run(example: Example) -> str | None:
    return next((why for needle, why in NOT_RUN.items() if _matches(example, needle)), None)


@dataclass
class World:
    data: Path
    url: str
    env: dict[str, str]
    work: Path
    values: dict[str, str] = field(default_factory=dict)


def _upload_tree(client: Minio, bucket: str, prefix: str, root: Path, limit: int) -> None:
    client.make_bucket(bucket)
    for path in sorted(root.rglob("*.dcm"))[:limit]:
        client.fput_object(bucket, f"{prefix}{path.relative_to(root).as_posix()}", str(path))


def _random_resnet_weights(path: Path) -> None:
    """resnet50's real architecture with random weights, as one safetensors file."""
    from safetensors.torch import save_file

    from core.config import RuntimeSettings, Settings
    from core.encoders.registry import get_spec, load_encoder
    from core.encoders.transformers_encoder import TransformersEncoder

    settings = Settings(data_dir=path.parent / "model-data", runtime=RuntimeSettings(device="cpu"))
    encoder = load_encoder(get_spec("resnet50"), settings, weights="random")
    assert isinstance(encoder, TransformersEncoder)
    save_file({k: v.contiguous() for k, v in encoder.model.state_dict().items()}, str(path))


def _substitute(text: str, world: World) -> str:
    """The README's placeholders → this test's values (README "Placeholders in the examples")."""
    replacements = {
        "https://radsearch.example:8443": world.url,
        "http://127.0.0.1:8000": world.url,
        "--port 8000": f"--port {world.url.rsplit(':', 1)[1]}",
        "RADSEARCH_API_KEY=rs_...": "RADSEARCH_API_KEY=",
        "./archive-2024": str(world.work / "archive-2024"),
        "./moved/archive": str(world.work / "moved/archive"),
        "./archive": str(world.work / "archive"),
        "labels.csv": str(world.work / "labels.csv"),
        "query.dcm": str(world.work / "query.dcm"),
        "query.png": str(world.work / "query.png"),
        "data/demo-archive": str(world.data / "demo-archive"),
        # rad-dino's 518-px inputs take ~1 s per image on a CPU: the walkthrough runs with resnet50
        "rad-dino": "resnet50",
        "biomedclip-v1": "demo",
    }
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    text = re.sub(r" \[(--[^\]]*)\]", "", text)
    text = text.replace("20261202T014500Z-3fa9c1", world.values.get("snapshot_id", "no-such-snapshot"))
    job = world.values.get("job_id", "no-such-job")
    text = re.sub(r"<job id>|JOB_ID|(?<=jobs/)<id>", job, text)
    return re.sub(r"<id of a hit>|<id>", world.values.get("point_id", "no-such-point"), text)


def _remember(world: World, output: str) -> None:
    """Ids a later example refers to: the last hit's id, the last job's id, a created key."""
    for line in output.splitlines():
        line = line.strip()
        if match := re.search(r"\b(rs_[A-Za-z0-9_\-]{20,})", line):
            world.values["KEY"] = match.group(1)
        if match := re.search(r"\b(\d{8}T\d{6}Z-[0-9a-f]{6})\b", line):
            world.values["snapshot_id"] = match.group(1)
        try:
            doc = json.loads(line)
        except ValueError:
            if re.fullmatch(r"[0-9a-f]{32}|[0-9a-f-]{36}", line):
                world.values["job_id"] = line
            continue
        if isinstance(doc, dict):
            if doc.get("hits"):
                world.values["point_id"] = str(doc["hits"][0]["id"])
            for key in ("job_id", "id"):
                if isinstance(doc.get(key), str) and ("state" in doc or key == "job_id"):
                    world.values["job_id"] = doc[key]


def _run(world: World, example: Example) -> tuple[int, str, float]:
    """Run one example in bash; a curl's status is its HTTP status, a command's its exit code."""
    command = _substitute(example.text, world)
    body = world.work / "body"
    is_curl = command.lstrip().startswith("curl")
    if is_curl:
        command = command.replace("curl", f"curl -sS -o {shlex.quote(str(body))} -w '%{{http_code}}'", 1)
    env = {**world.env, "KEY": world.values.get("KEY", "")}
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, cwd=world.work, timeout=300
    )
    seconds = time.monotonic() - started
    if is_curl:
        # a PNG answer (viewer images) is binary: decoded leniently, as only JSON answers are read
        output = body.read_bytes().decode("utf-8", "replace") if body.exists() else ""
        _remember(world, output)
        if "backfill-jobs/" in example.words:  # the README says: wait for "state": "done"
            _wait_for_job(f"{world.url}/v1/backfill-jobs/{world.values.get('job_id')}")
        return int(done.stdout.strip() or 0), output, seconds
    _remember(world, done.stdout)
    return done.returncode, done.stdout + done.stderr, seconds


def _wait_for_job(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if httpx.get(url, timeout=10).json().get("state") in ("done", "failed"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} never finished")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[World]:
    work = tmp_path_factory.mktemp("readme")
    data = work / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        RADSEARCH_DATA_DIR=str(data),
        RADSEARCH_S3__ENDPOINT=s3_endpoint,
        RADSEARCH_S3__ACCESS_KEY=S3_ACCESS_KEY,
        RADSEARCH_S3__SECRET_KEY=S3_SECRET_KEY,
        API=f"http://127.0.0.1:{port}",
    )
    yield World(data=data, url=f"http://127.0.0.1:{port}", env=env, work=work)


def _prepare_inputs(world: World, s3_endpoint: str) -> None:
    """The README's `./archive`, `labels.csv`, `query.*` and buckets, made from the demo archive."""
    archive = world.data / "demo-archive"
    target = world.work / "archive"
    rows = list(csvreader(archive / "manifest.csv"))
    for path in sorted((archive / "dicom").rglob("*.dcm")):
        for root in (target, world.work / "moved/archive", world.work / "archive-2024"):
            dest = root / path.relative_to(archive / "dicom")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    header = ["key", *[name for name in rows[0] if name != "key"]]
    lines = [",".join(header)]
    for row in rows:
        if row["key"].startswith("dicom/"):
            row = {**row, "key": row["key"].removeprefix("dicom/")}
            lines.append(",".join(row[name] for name in header))
    (world.work / "labels.csv").write_text("\n".join(lines) + "\n")
    nodule = next((archive / "dicom/CT/chest/nodule").glob("*.dcm"))
    (world.work / "query.dcm").write_bytes(nodule.read_bytes())
    (world.work / "query.png").write_bytes(next((archive / "png").rglob("*.png")).read_bytes())
    client = Minio(s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    _upload_tree(client, "pacs-export", "2024/", archive / "dicom/CT", limit=12)
    _upload_tree(client, "raw", "chest/", archive / "dicom/CR", limit=6)
    client.make_bucket("models")
    weights = world.work / "resnet50.safetensors"
    _random_resnet_weights(weights)
    client.fput_object("models", "resnet50/model.safetensors", str(weights))


def csvreader(path: Path) -> Iterator[dict[str, str]]:
    import csv

    with path.open(newline="") as fh:
        yield from csv.DictReader(fh)


def test_tables_name_real_examples() -> None:
    """Every expectation and exclusion matches an example of today's README (no stale entries)."""
    examples = readme_examples(README.read_text())
    assert len(examples) > 30
    for needle in [*EXPECTED_FAILURES, *NOT_RUN, *SETUP_EXAMPLES]:
        assert any(_matches(e, needle) for e in examples), f"no README example contains {needle!r}"


def test_every_readme_example_answers_as_documented(world: World, s3_endpoint: str) -> None:
    examples = readme_examples(README.read_text())
    setup = [next(e for e in examples if _matches(e, needle)) for needle in SETUP_EXAMPLES]

    # the demo's data without serving it: the README's serve example serves it next
    demo = _run(world, Example(setup[0].line, setup[0].text.replace("[--no-serve]", "--no-serve"), ""))
    assert demo[0] == 0, demo[1][-2000:]
    _prepare_inputs(world, s3_endpoint)
    serve_command = _substitute(setup[1].text, world)
    server = subprocess.Popen(
        ["bash", "-c", f"exec {serve_command}"],
        env=world.env,
        cwd=world.work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    report: list[str] = []
    failures: list[str] = []
    try:
        wait_ready(world.url, proc=server, timeout_s=120)
        for example in examples:
            if example in setup or _not_run(example):
                continue
            expected = _expected(example)
            status, output, seconds = _run(world, example)
            is_curl = example.text.lstrip().startswith("curl")
            ok = status == expected[0] if expected else (200 <= status < 300 if is_curl else status == 0)
            report.append(f"README:{example.line:<4} {status:>3} {seconds:5.1f}s  {example.text[:70]!r}")
            if not ok:
                failures.append(f"README line {example.line}: got {status}\n{example.text}\n{output[-1500:]}")
            if expected or not ok:
                assert "Traceback" not in output, f"README line {example.line} printed a traceback"
                assert len(output) < 4000, f"README line {example.line}: a {len(output)}-char error"
    finally:
        server.terminate()
        server.wait(timeout=60)
    print("\n".join(report))
    assert not failures, "\n\n".join(failures)
