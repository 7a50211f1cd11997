"""A stand-in for ``adb`` that replays recorded ``benchmark_model`` output and logs what it was asked.

Tests put an ``adb`` wrapper that runs this file first on PATH (``install_fake_adb``).  It behaves
like a Pixel 1 behind adb: ``get-state``, ``push`` (remembers the remote files), the facts loop
(``getprop`` and cpufreq, answered as the device shell would), ``chmod``, and the benchmark
command, which it splits like the device shell would and answers with the fixture in
``$FAKE_ADB_OUTPUT`` (exit code ``$FAKE_ADB_EXIT``).  A ``--graph`` that was never pushed gets
benchmark_model's real "Could not open" error.  Every invocation is appended to ``$FAKE_ADB_LOG``
as one JSON line: ``{"serial": ..., "args": [...], "t": ...}``.

Several phones: ``$FAKE_ADB_DEVICES`` maps serials to ``{"state", "model", "output", "exit"}``
(state as ``adb devices`` prints it, e.g. ``unauthorized``; the benchmark's answer and exit code).
Then ``adb devices`` lists them, ``-s`` must name one of them (adb's "not found" otherwise), and
each phone has its own pushed files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import sys
import time
from pathlib import Path

PIXEL1_PROPS = {"ro.product.model": "Pixel", "ro.product.manufacturer": "Google", "ro.board.platform": "msm8996",
                "ro.soc.model": "", "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.release": "10",
                "ro.build.version.sdk": "29"}
PIXEL1_MAX_FREQ_KHZ = {0: 1593600, 1: 1593600, 2: 2150400, 3: 2150400}
# What adb (transport.cpp) prints for a listed phone it cannot use.
STATE_ERRORS = {"unauthorized": "adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
                                "Try 'adb kill-server' if that seems wrong.\n"
                                "Otherwise check for a confirmation dialog on your device.",
                "offline": "adb: device offline"}


def install_fake_adb(directory: Path) -> Path:
    """Write an executable ``adb`` into ``directory`` that runs this fake with the current Python."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "adb"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "
                       "\"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def logged_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def pushed_paths(log: Path, serial: str | None = None) -> set[str]:
    return {call["args"][2] for call in logged_calls(log) if call["args"][:1] == ["push"] and call["serial"] == serial}


def phones() -> dict[str | None, dict]:
    """The configured phones; without ``$FAKE_ADB_DEVICES``, one phone that answers to any serial (key None)."""
    if "FAKE_ADB_DEVICES" in os.environ:
        return json.loads(os.environ["FAKE_ADB_DEVICES"])
    return {None: {"state": os.environ.get("FAKE_ADB_STATE", "device"), "output": os.environ.get("FAKE_ADB_OUTPUT"),
                   "exit": int(os.environ.get("FAKE_ADB_EXIT", "0"))}}


def shell(command: str, log: Path, serial: str | None, phone: dict) -> int:
    words = shlex.split(command)
    if props_loop := re.match(r"for p in ([\w. ]+); do echo \"prop \$p=\$\(getprop \$p\)\"; done; ", command):
        props = {**PIXEL1_PROPS, **({"ro.product.model": phone["model"]} if "model" in phone else {})}
        for prop in props_loop.group(1).split():  # the device shell's loop: unset props print empty
            print(f"prop {prop}={props.get(prop, '')}")
        if "cpuinfo_max_freq" in command:
            for cpu, khz in PIXEL1_MAX_FREQ_KHZ.items():
                print(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq {khz}")
        return 0
    if words[:1] == ["chmod"]:
        return 0 if words[-1] in pushed_paths(log, serial) else 1
    if words[:1] == ["taskset"]:
        words = words[2:]
    if words and words[-1] == "2>&1":
        words = words[:-1]
    graphs = [word.split("=", 1)[1] for word in words if word.startswith("--graph=")]
    if not words or words[0] not in pushed_paths(log, serial) or len(graphs) != 1:
        print(f"/system/bin/sh: {words[0] if words else command}: inaccessible or not found")
        return 127
    if graphs[0] not in pushed_paths(log, serial):
        print("INFO: STARTING!")
        print(f"ERROR: Could not open '{graphs[0]}'.")
        print(f"ERROR: Failed to mmap model {graphs[0]}")
        return 1
    sys.stdout.write(Path(phone["output"]).read_text())
    return int(phone.get("exit", 0))


def main(argv: list[str]) -> int:
    log = Path(os.environ["FAKE_ADB_LOG"])
    serial = None
    if argv[:1] == ["-s"]:
        serial, argv = argv[1], argv[2:]
    with log.open("a") as handle:
        handle.write(json.dumps({"serial": serial, "args": argv, "t": time.time()}) + "\n")
    configured = phones()
    if argv == ["devices"]:
        print("List of devices attached")
        for name, phone in configured.items():
            print(f"{name or 'FA6A10301234'}\t{phone['state']}")
        print()
        return 0
    phone = configured[None] if None in configured else configured.get(serial)
    if phone is None:
        print(f"adb: device '{serial}' not found", file=sys.stderr)
        return 1
    if phone["state"] != "device":
        print(f"error: {phone['state']}" if None in configured else STATE_ERRORS[phone["state"]], file=sys.stderr)
        return 1
    if argv[:1] == ["get-state"]:
        print("device")
        return 0
    if argv[:1] == ["push"] and len(argv) == 3:
        if not Path(argv[1]).is_file():
            print(f"adb: error: cannot stat '{argv[1]}': No such file or directory", file=sys.stderr)
            return 1
        print(f"{argv[1]}: 1 file pushed, 0 skipped. 38.1 MB/s ({Path(argv[1]).stat().st_size} bytes in 0.002s)")
        return 0
    if argv[:1] == ["shell"] and len(argv) == 2:
        return shell(argv[1], log, serial, phone)
    print(f"fake adb: unsupported command {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
