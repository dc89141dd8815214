"""The media benchmark runs end to end on a small file and prints its figures (measured, not
asserted): what is checked is that each figure is printed, each file was uploaded once and
each download was checked and answered (the run's exit status)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_media_benchmark_prints_upload_and_download_through_fsm_serve() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "FSM_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_media", "--mb", "1", "--rounds", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("upload:", "raw upload", "download:", "raw download", "ratio", "none twice): yes",
                 "checked and answered: yes"):  # fmt: skip
        assert line in done.stdout, done.stdout
