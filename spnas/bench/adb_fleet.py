"""Several phones over adb at once (``spnas-bench --adb-serial S1,S2,...`` or ``all``).

Each phone runs the single-phone benchmark (``spnas.bench.adb.run_adb``) in its own thread: the
phones are independent, and the host only waits on ``adb``.  One report holds a row per phone,
artifact and thread count under the phone's ``device_name``; a phone that fails (unauthorized,
offline, a benchmark_model error) is reported as failed with its reason and the others still
report, as for a partial AI Hub fleet.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spnas.bench.adb import Adb, adb_device_name, check_inputs, precision_from_name, run_adb
from spnas.errors import SpnasError


def listed_devices(adb: Adb) -> list[tuple[str, str]]:
    """``adb devices``: (serial, state) pairs, e.g. ("emulator-5554", "device"), ("R5CT...", "unauthorized")."""
    lines = adb.run("devices").stdout.splitlines()
    pairs = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 2 and not line.startswith(("List of devices", "*")):
            pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def resolve_serials(text: str) -> list[str]:
    """``S1,S2`` in order without repeats, or ``all``: every device ``adb devices`` lists in state ``device``."""
    if text.strip() != "all":
        serials = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        if not serials:
            raise SpnasError("--adb-serial: give serials (S1,S2,... as `adb devices` lists them) or 'all'")
        return serials
    listed = listed_devices(Adb())
    ready = [serial for serial, state in listed if state == "device"]
    if not ready:
        others = ", ".join(f"{serial} ({state})" for serial, state in listed) or "none listed"
        raise SpnasError(f"--adb-serial all: adb lists no device in state 'device' ({others})")
    return ready


def run_adb_fleet(artifacts: list[Path], binary: Path, threads_list: list[int], warmup: int, runs: int,
                  serials: list[str], *, taskset: str | None = None, use_xnnpack: bool = True,
                  extra_args: list[str] | None = None, progress=print) -> dict:
    """Every phone in parallel; the ``--adb`` document with ``devices`` and a ``device_name`` per record."""
    from spnas.bench import LATENCY_KEYS, add_ratios
    from spnas.version import __version__

    check_inputs(artifacts, binary, taskset)

    def one(serial: str):
        try:
            return run_adb(artifacts, binary, threads_list, warmup, runs, serial=serial, taskset=taskset,
                           use_xnnpack=use_xnnpack, extra_args=extra_args,
                           progress=lambda message: progress(f"[{serial}] {message}"))
        except SpnasError as exc:
            progress(f"[{serial}] failed: {exc}")
            return exc

    with ThreadPoolExecutor(max_workers=len(serials)) as pool:
        outcomes = list(pool.map(one, serials))
    if all(isinstance(outcome, SpnasError) for outcome in outcomes):
        raise SpnasError("every phone failed: " + "; ".join(f"[{s}] {o}" for s, o in zip(serials, outcomes,
                                                                                           strict=True)))
    records, devices, settings = [], [], None
    for serial, outcome in zip(serials, outcomes, strict=True):
        if isinstance(outcome, SpnasError):
            records += [{"artifact": artifact.name, "path": str(artifact), "format": "tflite",
                         "precision": precision_from_name(artifact.name), "threads": threads,
                         "device_name": serial, "serial": serial, "status": "failed", "failure": str(outcome),
                         "latency_ms": dict.fromkeys(LATENCY_KEYS), "peak_rss_mb": None}
                        for threads in threads_list for artifact in artifacts]
            continue
        devices.append(outcome["device"])
        settings = settings or outcome["settings"]
        name = adb_device_name(outcome["device"])
        records += [{**record, "device_name": name, "serial": serial, "device": outcome["device"], "status": "ok"}
                    for record in outcome["results"]]
    add_ratios(records, key=lambda record: (record["device_name"], record["threads"]))
    return {"spnas_version": __version__, "mode": "adb", "devices": devices,
            "settings": {**settings, "serials": serials}, "results": records}
