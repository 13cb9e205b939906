"""Coverage-guided fuzzing of the DICOM and PNG/JPEG readers (atheris, in a subprocess) for a fixed
time budget each: ``RADSEARCH_FUZZ_SECONDS`` (default 30, which keeps the whole suite near 20 minutes
on the slowest 2-core host seen; set it higher for a longer campaign)."""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.hostile import seeds

HARNESS = Path(__file__).with_name("fuzz_readers.py")
SECONDS = float(os.environ.get("RADSEARCH_FUZZ_SECONDS", "30"))
ATHERIS = importlib.util.find_spec("atheris") is not None


def _rss_limit_mb(budget_mb: int = 2048) -> int:
    # libFuzzer reads the peak RSS from getrusage, and Linux carries a parent's peak RSS across fork
    # and exec: the child of a test process that has loaded several models starts out "using" that
    # much. Allow the budget on top of what the child inherits.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return inherited_mb + budget_mb


@pytest.mark.slow
@pytest.mark.parametrize("target", ["dicom", "png"])
def test_fuzz_reader(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    artifacts = tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    for name, data in seeds().items():
        if name.endswith(".dcm") == (target == "dicom"):
            (corpus / name).write_bytes(data)
    seed_count = len(list(corpus.iterdir()))
    command = [sys.executable, str(HARNESS), target, str(corpus)]
    if ATHERIS:
        command += [
            f"-max_total_time={int(SECONDS)}",
            "-timeout=10",
            f"-rss_limit_mb={_rss_limit_mb()}",
            "-max_len=1048576",
            f"-artifact_prefix={artifacts}/",
        ]
    else:
        command.append("--fallback")
    env = {**os.environ, "RADSEARCH_FUZZ_SECONDS": str(SECONDS)}
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=SECONDS + 240, env=env, cwd=tmp_path
    )
    output = proc.stdout + proc.stderr
    artifacts_found = sorted(p.name for p in artifacts.iterdir())
    if ATHERIS:
        done = re.search(r"Done (\d+) runs in (\d+) second", output)
        execs = int(done.group(1)) if done else 0
        seconds = int(done.group(2)) if done else SECONDS
        crashes = len([a for a in artifacts_found if a.startswith("crash-")])
        timeouts = len([a for a in artifacts_found if a.startswith("timeout-")])
        ooms = len([a for a in artifacts_found if a.startswith("oom-")])
        corpus_size = len(list(corpus.iterdir()))
        print(
            f"fuzz_{target}: engine=atheris execs={execs} exec_per_s={execs / max(seconds, 1):.0f} "
            f"seeds={seed_count} corpus={corpus_size} crashes={crashes} timeouts={timeouts} ooms={ooms}"
        )
        assert proc.returncode == 0 and done, output[-4000:]
        assert crashes == timeouts == ooms == 0, output[-4000:]
    else:
        print(f"fuzz_{target}: {proc.stdout.strip()}")
        assert proc.returncode == 0, output[-4000:]
