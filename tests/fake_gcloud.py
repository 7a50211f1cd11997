"""A stand-in for ``gcloud`` and ``gsutil``, for android_demo/firebase_test_lab.sh (no machine here reaches Test Lab).

Built from ``gcloud firebase test android run --help`` (Cloud SDK 528): ``gcloud`` logs its argv as
one JSON line to ``$FAKE_GCLOUD_LOG`` and exits with ``$FAKE_GCLOUD_EXIT`` (Test Lab's non-zero exit
when a device's test failed).  ``gsutil -m cp -r gs://BUCKET/DIR DEST/`` copies DIR into DEST as
gsutil does: one folder per device that ran, holding what ``--directories-to-pull`` brought back
under ``artifacts/`` (the demo app's report, tests/data/android_app/, for each ``model=`` in the
logged ``--device`` flags except those named in ``$FAKE_GCLOUD_NO_REPORT``).  The folder names
mimic Test Lab's (model-version-locale-orientation); the script finds reports by file name, so it
does not depend on them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

REPORT = Path(__file__).parent / "data" / "android_app" / "spnas-bench-android.json"


def install_fake_cloud(directory: Path) -> None:
    """Executable ``gcloud`` and ``gsutil`` in ``directory`` that run this file with the current Python."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ("gcloud", "gsutil"):
        wrapper = directory / tool
        fake = shlex.quote(str(Path(__file__).resolve()))
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {fake} {tool} \"$@\"\n")
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]


def main(tool: str, argv: list[str]) -> int:
    log = Path(os.environ["FAKE_GCLOUD_LOG"])
    if tool == "gcloud":
        with log.open("a") as handle:
            handle.write(json.dumps(argv) + "\n")
        return int(os.environ.get("FAKE_GCLOUD_EXIT", "0"))
    if argv[:3] != ["-m", "cp", "-r"] or len(argv) != 5 or not argv[3].startswith("gs://"):
        print(f"fake gsutil: unsupported command {argv}", file=sys.stderr)
        return 1
    run = json.loads(log.read_text().splitlines()[-1])
    bucket, _, results_dir = argv[3][len("gs://"):].partition("/")
    if bucket != flag_values(run, "--results-bucket")[0] or results_dir != flag_values(run, "--results-dir")[0]:
        print(f"CommandException: No URLs matched: {argv[3]}", file=sys.stderr)
        return 1
    (pulled,) = flag_values(run, "--directories-to-pull")
    skipped = set(os.environ.get("FAKE_GCLOUD_NO_REPORT", "").split(","))
    for device in flag_values(run, "--device"):
        dimensions = dict(item.split("=", 1) for item in device.split(","))
        folder = Path(argv[4]) / results_dir / f"{dimensions['model']}-{dimensions.get('version', '34')}-en-portrait"
        (folder / "test_result_1.xml").parent.mkdir(parents=True, exist_ok=True)
        (folder / "test_result_1.xml").write_text("<testsuite/>\n")
        if dimensions["model"] not in skipped:
            target = folder / "artifacts" / pulled.lstrip("/") / REPORT.name
            target.parent.mkdir(parents=True)
            shutil.copyfile(REPORT, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
