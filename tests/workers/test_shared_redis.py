"""Two deployments, one Redis database: every job names its store (`core.store_identity`), and a
worker leaves another store's jobs to that store's workers instead of writing them into its own
(or failing them where its store lacks the collection). Real processes: Redis, moto's S3, two
`radsearch serve` owners, their workers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from minio import Minio

from core.config import Settings, Subscription
from core.jobs import DeadLetter, JobKind, JobSpec
from core.jobs.redis_store import RedisJobStore
from core.store_identity import served_store_id, store_id
from tests.workers.conftest import Server, Worker, cli, upload_images, wait_api_job


def test_a_worker_leaves_the_jobs_of_another_store_sharing_its_redis(
    worker_settings: Settings,
    tmp_path: Path,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    ours = worker_settings
    theirs = worker_settings.model_copy(update={"data_dir": tmp_path / "other-deployment"})
    assert store_id(ours) != store_id(theirs) and store_id(ours) == store_id(ours)
    keys = [f"shared/{i:02d}.png" for i in range(12)]
    upload_images(minio_client, bucket, keys)
    server, other_server = start_server(ours), start_server(theirs)
    # both stores have a collection of that name: the other's worker would fill it with our images
    server.create_collection("chest")
    other_server.create_collection("chest")
    other_worker = start_worker(theirs, "--hostname", "theirs@test", name="other-worker")
    api, other_api = server.client(), other_server.client()
    assert api.get("/v1/store").json() == {"store_id": store_id(ours), "backend": "edge"}

    created = api.post("/v1/ingest-jobs", json={"source": f"s3://{bucket}/shared/", "collections": ["chest"]})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while "writes another store" not in other_worker.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the message it gave back goes on bouncing while no worker of ours runs
    log = other_worker.log()
    assert (
        f"job {job_id} writes another store ({store_id(ours)}) than this worker's ({store_id(theirs)})" in log
    )
    assert "RADSEARCH_REDIS__URL=redis://HOST:6379/1" in log and log.count(f"job {job_id} writes") == 1
    assert other_api.get("/v1/collections/chest").json()["points"] == 0
    job = api.get(f"/v1/ingest-jobs/{job_id}").json()
    assert job["state"] in ("queued", "planning") and job["error"] is None
    # each server lists its own store's jobs only, as do the command line and the dead-letter replay
    assert [j["id"] for j in api.get("/v1/ingest-jobs").json()["data"]] == [job_id]
    assert other_api.get("/v1/ingest-jobs").json()["data"] == []
    listed = cli(theirs, "jobs", "list", "--json")  # through the other store's server
    assert listed.returncode == 0 and job_id not in listed.stdout, listed.stderr

    # ours runs "on another host": no data dir of ours, the server's URL (it asks it for the store)
    remote = ours.model_copy(update={"data_dir": tmp_path / "worker-host", "url": server.url})
    assert served_store_id(remote) == store_id(ours)
    start_worker(remote, "--hostname", "ours@test", name="our-worker")
    done = wait_api_job(api, job_id)
    assert done["state"] == "done" and done["counts"]["indexed_frames"] == 12, done  # type: ignore[index]
    assert api.get("/v1/collections/chest").json()["points"] == 12
    assert other_api.get("/v1/collections/chest").json()["points"] == 0
    assert {w["store"] for w in api.get("/v1/workers").json()["data"]} == {store_id(ours), store_id(theirs)}
    other_server.stop()
    for settings, listed_here in ((theirs, False), (ours, True)):  # from Redis, by each data dir
        listed = cli(settings, "jobs", "list", "--json")
        assert listed.returncode == 0 and (job_id in listed.stdout) == listed_here, listed.stderr


def test_job_listing_and_dead_letters_select_one_store(job_store: RedisJobStore) -> None:
    def spec(store: str | None) -> JobSpec:
        return JobSpec(source="s3://bucket/ct/", collections=("a",), store=store)

    ours, theirs, legacy = (
        job_store.create(JobKind.INGEST, spec(s)) for s in ("edge:ours", "edge:theirs", None)
    )
    for _ in range(60):  # the other store's newer jobs fill a page: ours are found past them
        job_store.create(JobKind.INGEST, spec("edge:theirs"))
    assert [r.id for r in job_store.recent(limit=5, for_store="edge:ours")] == [legacy, ours]
    assert len(job_store.recent(limit=5)) == 5
    assert theirs in {r.id for r in job_store.recent(limit=100, for_store="edge:theirs")}
    for job_id, store in ((ours, "edge:ours"), (theirs, "edge:theirs"), (legacy, None)):
        job_store.dead_letter(DeadLetter(job_id, "b0", spec(store), ["ct/1.png"], "boom", 1, time.time()))
    assert [d.job_id for d in job_store.dead_letters(for_store="edge:ours")] == [ours, legacy]
    assert [d.job_id for d in job_store.take_dead_letters(for_store="edge:ours")] == [ours, legacy]
    assert [d.job_id for d in job_store.dead_letters()] == [theirs]


def test_the_periodic_reconcile_runs_on_the_workers_of_its_own_store(
    worker_settings: Settings,
    tmp_path: Path,
    job_store: RedisJobStore,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    def with_subscription(settings: Settings, prefix: str, collection: str) -> Settings:
        events = settings.events.model_copy(
            update={"subscriptions": [Subscription(bucket=bucket, prefix=prefix, collections=[collection])]}
        )
        celery = settings.celery.model_copy(update={"reconcile_interval_s": 1.0})
        return settings.model_copy(update={"events": events, "celery": celery})

    ours = with_subscription(worker_settings, "ours/", "ticked")
    theirs = with_subscription(
        worker_settings.model_copy(update={"data_dir": tmp_path / "other-deployment"}),
        "theirs/",
        "not-ticked",
    )
    upload_images(minio_client, bucket, ["ours/0.png", "theirs/0.png"])
    server, other_server = start_server(ours), start_server(theirs)
    server.create_collection("ticked")
    other_server.create_collection("not-ticked")
    # the other store's worker waits on the plan queue beside our planner, which runs the beat
    other_worker = start_worker(theirs, "--queues", "plan", name="other-worker")
    start_worker(ours, "--queues", "plan", "--beat", name="planner")
    deadline = time.monotonic() + 60
    told = "the periodic reconcile of the subscriptions writes another store"
    while time.monotonic() < deadline and not (
        told in other_worker.log() and len(job_store.recent(limit=100, for_store=store_id(ours))) >= 2
    ):
        time.sleep(0.2)
    assert told in other_worker.log()
    ticks = job_store.recent(limit=100)
    assert len(ticks) >= 2 and {(job.kind, job.spec.collections, job.spec.store) for job in ticks} == {
        (JobKind.RECONCILE, ("ticked",), store_id(ours))
    }


def test_a_copy_of_a_data_dir_is_not_served_beside_it_on_one_redis(
    worker_settings: Settings, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """A backup restored beside its original keeps the store id: on the same Redis the two would
    run each other's jobs, so the second server refuses to start, naming the first and the fix. A
    server stopped lets go of the id at once."""
    original = worker_settings
    server = start_server(original)
    copy = original.model_copy(update={"data_dir": tmp_path / "restored"})
    copy.index_dir.mkdir(parents=True)
    shutil.copy(original.index_dir / "store-id", copy.index_dir / "store-id")

    def refused(settings: Settings) -> str:
        second = start_server(settings, wait=False)
        assert second.proc is not None and second.proc.wait(timeout=60) == 2
        return second.log()

    log = refused(copy)
    assert f"store id {store_id(original)} is already claimed on this Redis (the broker)" in log, log
    assert f"by the radsearch server of data dir {original.data_dir.resolve()} on host" in log
    assert (
        f"for this one: remove {copy.index_dir / 'store-id'} and start again" in log
        and "Traceback" not in log
    )
    assert server.client().get("/readyz").status_code == 200  # the first is not disturbed
    server.stop()  # SIGTERM
    started = time.monotonic()
    start_server(copy)
    assert time.monotonic() - started < 25  # let go, not lapsed (30 s)
    assert f"data dir {copy.data_dir.resolve()} on host" in refused(original)
