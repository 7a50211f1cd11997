"""The emulated environments: qemu-user, a minimal Debian arm64 Python, LiteRT's and ONNX Runtime's aarch64 wheels.

Everything comes from the two registries a CI machine reaches (Debian's archive through
``apt-get``, PyPI through ``pip``) and is cached in ``$SPNAS_CACHE/arm64`` (default
``~/.cache/spnas/arm64``).  No root, no chroot, no binfmt_misc and no system apt
configuration are needed: ``apt-get`` runs against a private state folder, so it only
downloads, and ``dpkg-deb`` unpacks.  Python is then run as
``qemu-aarch64 -cpu CORE -L ROOTFS ROOTFS/usr/bin/python3.11``; ``-L`` makes the guest find
its loader and libraries in ROOTFS while it still sees the host's ``/sys`` and ``/proc``
(XNNPACK is silently skipped when ``/sys`` is missing, as under a bare chroot).  The same qemu-user
package gives ``qemu-x86_64``, which runs this host's own Python on an older x86 CPU model
(``-cpu Haswell-noTSX``: AVX2 without AVX-512 or VNNI) for the CPU-tier matrix (``spnas.arm64.tiers``).

qemu before 8.0 shows the guest the x86 ``/proc/cpuinfo`` (LiteRT's CPU detection crashes on
it) and before 10 its ``-cpu max`` SME emulation has given wrong int8 results; such a qemu is
used only with a per-core fake ``/proc/cpuinfo`` and with SME off (see ``cpu_flag``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spnas.errors import SpnasError

APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
GUEST_SUITE = "bookworm"  # its python3.11 matches the cp311 aarch64 wheels
QEMU_SUITE = "bookworm-backports"  # qemu-user 10, static binaries
GUEST_PACKAGES = ("python3.11", "libstdc++6")  # the interpreter and LiteRT's C++ runtime
GUEST_PYTHON = "usr/bin/python3.11"
WHEEL_PLATFORM = "manylinux_2_27_aarch64"  # ai-edge-litert 2.x is tagged only this; other tags fall back to 1.4
QEMU_NAMES = ("qemu-aarch64", "qemu-aarch64-static")
QEMU_X86 = "qemu-x86_64"
QEMU_BINARIES = ("qemu-aarch64", QEMU_X86)  # taken out of Debian's qemu-user, which holds every target
ORT_WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64")
CPUINFO_EMULATED_SINCE = (8, 0)  # linux-user emulates the aarch64 /proc/cpuinfo from 8.0 on
SME_TRUSTED_SINCE = (10, 0)  # 7.2's SME emulation gave wrong int8 results under -cpu max; 10 is verified
NETWORK_ERRORS = re.compile(r"resolv|connect|unreachable|timed? ?out|network|Max retries|Failed to fetch|NewConnection",
                            re.IGNORECASE)

# MIDR part numbers, for the fake /proc/cpuinfo an old qemu needs (cpuinfo reads the core from it).
CORE_PARTS = {"cortex-a35": 0xD04, "cortex-a53": 0xD03, "cortex-a55": 0xD05, "cortex-a57": 0xD07,
              "cortex-a72": 0xD08, "cortex-a76": 0xD0B, "cortex-a710": 0xD47, "neoverse-n1": 0xD0C,
              "neoverse-n2": 0xD49, "neoverse-v1": 0xD40}
ARMV8_0_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
ARMV8_2_FEATURES = ARMV8_0_FEATURES + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
ARMV8_0_CORES = ("cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72")

Progress = Callable[[str], object]


def stderr_progress(message: str) -> None:
    """Default progress sink: stderr, so stdout keeps only tables and requested output."""
    print(message, file=sys.stderr, flush=True)


def cache_root() -> Path:
    """``$SPNAS_CACHE/arm64``, else ``$XDG_CACHE_HOME/spnas/arm64``, else ``~/.cache/spnas/arm64``."""
    base = os.environ.get("SPNAS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spnas"
    return Path(base) / "arm64"


def parse_qemu_version(text: str) -> tuple[int, int, int]:
    """``qemu-aarch64 version 10.0.2 (Debian ...)`` -> (10, 0, 2)."""
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        raise SpnasError(f"cannot read a qemu version from {text.strip()[:80]!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def qemu_version(binary: str | Path) -> tuple[int, int, int]:
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise SpnasError(f"{binary}: cannot run ({exc.strerror})") from exc
    return parse_qemu_version(result.stdout)


def cpu_flag(cpu: str, version: tuple[int, ...]) -> str:
    """The ``-cpu`` value for a CPU model: SME off for ``max`` on a qemu whose SME is not trusted."""
    if cpu == "max" and tuple(version) < SME_TRUSTED_SINCE:
        return "max,sme=off"
    return cpu


def fake_cpuinfo(cpu: str, processors: int = 4) -> str:
    """An aarch64 ``/proc/cpuinfo`` for ``cpu``, for a qemu that would show the x86 one."""
    if cpu not in CORE_PARTS:
        raise SpnasError(f"qemu before {'.'.join(map(str, CPUINFO_EMULATED_SINCE))} needs a named core "
                         f"({', '.join(CORE_PARTS)}), not {cpu!r}")
    features = ARMV8_0_FEATURES if cpu in ARMV8_0_CORES else ARMV8_2_FEATURES
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             f"CPU variant\t: 0x0\nCPU part\t: 0x{CORE_PARTS[cpu]:03x}\nCPU revision\t: 0\n\n")
    return "".join(f"processor\t: {index}\n{block}" for index in range(processors))


@dataclass(frozen=True)
class Arm64Env:
    """A ready environment; ``command`` builds the guest Python invocation."""

    root: Path
    qemu: Path
    qemu_version: tuple[int, int, int]
    qemu_source: str
    rootfs: Path
    site_packages: Path
    litert_version: str
    facts: dict = field(default_factory=dict)
    extra_site_packages: tuple[Path, ...] = ()  # ONNX Runtime's aarch64 wheel, for the CPU tiers

    @property
    def qemu_x86(self) -> Path:
        """``qemu-x86_64`` beside the chosen ``qemu-aarch64`` (the cached qemu-user has both), else on PATH."""
        beside = self.qemu.with_name(QEMU_X86)
        found = beside if beside.is_file() else shutil.which(QEMU_X86)
        if not found:
            raise SpnasError(f"no {QEMU_X86} beside {self.qemu} nor on PATH: apt-get install qemu-user, or unset "
                             "$SPNAS_QEMU so the cached qemu-user (both emulators) is used")
        return Path(found)

    @property
    def needs_fake_cpuinfo(self) -> bool:
        return self.qemu_version < CPUINFO_EMULATED_SINCE

    def workarounds(self, cpu: str) -> list[str]:
        notes = []
        if self.needs_fake_cpuinfo:
            notes.append(f"fake aarch64 /proc/cpuinfo for {cpu} (qemu {self.version_text} shows the host's)")
        if cpu_flag(cpu, self.qemu_version) != cpu:
            notes.append(f"-cpu {cpu_flag(cpu, self.qemu_version)} (SME emulation of qemu {self.version_text} "
                         "is not trusted)")
        return notes

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.qemu_version))

    def prefix(self, cpu: str) -> Path:
        """The ``-L`` folder: the rootfs, or for an old qemu a per-core view of it with a fake cpuinfo."""
        if not self.needs_fake_cpuinfo:
            return self.rootfs
        view = self.root / "cpuinfo-views" / cpu
        cpuinfo = view / "proc" / "cpuinfo"
        if not cpuinfo.is_file():
            cpuinfo.parent.mkdir(parents=True, exist_ok=True)
            for entry in self.rootfs.iterdir():
                if entry.name != "proc":
                    with contextlib.suppress(FileExistsError):  # another run made the same view
                        (view / entry.name).symlink_to(entry)
            cpuinfo.write_text(fake_cpuinfo(cpu))
        return view

    def command(self, cpu: str, script: str | Path, *args: str) -> list[str]:
        prefix = self.prefix(cpu)
        return [str(self.qemu), "-cpu", cpu_flag(cpu, self.qemu_version), "-L", str(prefix),
                str(prefix / GUEST_PYTHON), str(script), *map(str, args)]

    def environment(self) -> dict[str, str]:
        """Host environment minus Python settings meant for the host, plus the wheels on PYTHONPATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_", "VIRTUAL_ENV"))}
        env.update(PYTHONPATH=os.pathsep.join(map(str, (self.site_packages, *self.extra_site_packages))),
                   PYTHONNOUSERSITE="1")
        return env

    def cpu_models(self) -> list[str]:
        result = subprocess.run([str(self.qemu), "-cpu", "help"], capture_output=True, text=True, timeout=60)
        return [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()]


# ---------------------------------------------------------------- cache state


def component_ready(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def read_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def component_dirs(root: Path, litert_version: str, ort_version: str | None = None) -> dict[str, Path]:
    """The cached components; ``onnxruntime`` only when asked for (the CPU tiers run ONNX, ``--arm64`` does not)."""
    dirs = {"qemu": root / "qemu-user", "rootfs": root / f"rootfs-{GUEST_SUITE}",
            "wheels": root / f"litert-{litert_version}"}
    if ort_version:
        dirs["onnxruntime"] = root / f"onnxruntime-{ort_version}"
    return dirs


def cache_state(root: Path | None = None, litert_version: str | None = None,
                ort_version: str | None = None) -> dict[str, dict]:
    """What is cached: per component, ``ready`` and (when ready) its manifest; cheap, runs nothing."""
    root = root or cache_root()
    litert_version = litert_version or host_litert_version()
    state = {}
    for name, path in component_dirs(root, litert_version, ort_version).items():
        ready = component_ready(path)
        state[name] = {"path": str(path), "ready": ready, **(read_manifest(path) if ready else {})}
    return state


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_component(final: Path, build: Callable[[Path], dict]) -> dict:
    """Build into a private sibling folder, then rename it into place, so a crash leaves no half cache."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        manifest = build(work)
        manifest["disk_bytes"] = directory_bytes(work)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        work.chmod(0o755)  # mkdtemp makes it private; the cache may be shared through $SPNAS_CACHE
        try:
            os.rename(work, final)
        except OSError:
            if not component_ready(final):  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_manifest(final)


# ---------------------------------------------------------------- downloads


def mirror() -> str:
    """The Debian archive to download from: ``$SPNAS_DEBIAN_MIRROR``, else the host's own apt source."""
    configured = os.environ.get("SPNAS_DEBIAN_MIRROR") or host_debian_mirror()
    if not configured:
        raise SpnasError("no Debian archive configured: set $SPNAS_DEBIAN_MIRROR to a Debian mirror URL "
                         "(the host's apt sources name none)")
    return configured.rstrip("/")


def host_debian_mirror(sources: tuple[Path, ...] | None = None) -> str | None:
    """The first Debian archive URI in the host's apt sources (one-line or deb822), or None."""
    files = []
    for source in sources or APT_SOURCES:
        files += sorted(source.glob("*.list")) + sorted(source.glob("*.sources")) if source.is_dir() else [source]
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for uri in re.findall(r"^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return None


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


class PrivateApt:
    """``apt-get`` on a private state folder: downloads Debian packages without root or system changes."""

    def __init__(self, root: Path, architecture: str, suite: str):
        self.root = root
        self.architecture = architecture
        self.suite = suite
        for sub in ("lists/partial", "archives/partial", "etc/apt.conf.d", "etc/preferences.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (root / "etc" / "sources.list").write_text(
            f"deb [signed-by={DEBIAN_KEYRING}] {mirror()} {suite} main\n")

    def options(self) -> list[str]:
        root = self.root
        settings = {
            "Dir::Etc": root / "etc", "Dir::Etc::SourceList": root / "etc" / "sources.list",
            "Dir::Etc::SourceParts": root / "etc" / "sources.list.d", "Dir::Etc::Parts": root / "etc" / "apt.conf.d",
            "Dir::Etc::Preferences": root / "etc" / "preferences", "Dir::Etc::PreferencesParts":
            root / "etc" / "preferences.d", "Dir::State": root, "Dir::State::Lists": root / "lists",
            "Dir::State::status": root / "status", "Dir::Cache": root, "Dir::Cache::archives": root / "archives",
            "Debug::NoLocking": "1", "APT::Architecture": self.architecture, "APT::Architectures": self.architecture,
            "APT::Install-Recommends": "0", "Acquire::Languages": "none",
        }
        if os.geteuid() != 0:  # apt drops to the _apt user only when it is root
            settings["APT::Sandbox::User"] = os.environ.get("USER") or str(os.geteuid())
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def run(self, *args: str, what: str) -> str:
        command = ["apt-get", "-q", *self.options(), *args]
        result = subprocess.run(command, capture_output=True, text=True)
        output = result.stdout + result.stderr
        failed = result.returncode != 0 or re.search(r"^(E:|W: Failed to fetch|Err:)", output, re.MULTILINE)
        if failed:
            lines = [line for line in output.splitlines() if line.startswith(("E:", "W:", "Err:"))] or ["?"]
            if NETWORK_ERRORS.search(output):
                raise SpnasError(f"no network: cannot download {what} from {mirror()} ({lines[0].strip()}); "
                                 "the first --arm64 run needs Debian's archive (or set $SPNAS_DEBIAN_MIRROR)")
            raise SpnasError(f"apt-get could not get {what} ({lines[0].strip()})")
        return output

    def update(self) -> None:
        self.run("update", what=f"the {self.suite} {self.architecture} package index")

    def download(self, packages: tuple[str, ...], what: str, progress: Progress) -> list[Path]:
        """Download packages with their dependency closure (nothing counts as installed)."""
        uris = self.run("install", "--print-uris", "-qq", "-y", *packages, what=what)
        total = sum(int(m[1]) for m in re.finditer(r"^'\S+' \S+ (\d+)", uris, re.MULTILINE))
        count = len(re.findall(r"^'", uris, re.MULTILINE))
        progress(f"arm64: downloading {what}: {count} Debian package(s), {megabytes(total)} ...")
        start = time.perf_counter()
        self.run("install", "--download-only", "-y", *packages, what=what)
        debs = sorted((self.root / "archives").glob("*.deb"))
        progress(f"arm64: downloaded {what} in {time.perf_counter() - start:.1f}s")
        return debs


def require_tools(*names: str, why: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise SpnasError(f"{why} needs {', '.join(missing)} (Debian/Ubuntu tools) on PATH")
    if not DEBIAN_KEYRING.is_file():
        raise SpnasError(f"{why} needs Debian's archive keyring {DEBIAN_KEYRING}: "
                         "apt-get install debian-archive-keyring")


def host_debian_architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def build_qemu(work: Path, progress: Progress) -> dict:
    """``qemu-aarch64`` and ``qemu-x86_64`` out of Debian's qemu-user (static binaries; it holds every target)."""
    apt = PrivateApt(work / "apt", host_debian_architecture(), QEMU_SUITE)
    apt.update()
    debs = apt.download(("qemu-user",), f"qemu-user from Debian {QEMU_SUITE}", progress)
    deb = next(deb for deb in debs if deb.name.startswith("qemu-user_"))
    download_bytes = deb.stat().st_size
    wanted = {f"{prefix}usr/bin/{name}": name for name in QEMU_BINARIES for prefix in ("./", "")}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as unpack, \
            tarfile.open(fileobj=unpack.stdout, mode="r|") as archive:
        for member in archive:
            if member.name in wanted:
                (work / wanted[member.name]).write_bytes(archive.extractfile(member).read())
        unpack.stdout.read()
    missing = [name for name in QEMU_BINARIES if not (work / name).is_file()]
    if unpack.returncode != 0 or missing:
        raise SpnasError(f"{deb.name}: no usr/bin/{', '.join(missing) or QEMU_BINARIES[0]} in it")
    for name in QEMU_BINARIES:
        (work / name).chmod(0o755)
    shutil.rmtree(work / "apt")
    version = qemu_version(work / "qemu-aarch64")
    return {"component": "qemu", "package": deb.name, "download_bytes": download_bytes,
            "version": list(version), "source": f"{mirror()} {QEMU_SUITE}"}


def build_rootfs(work: Path, progress: Progress) -> dict:
    """Debian arm64 python3.11 and its libraries, unpacked (no maintainer scripts are run, none are needed)."""
    apt = PrivateApt(work / "apt", "arm64", GUEST_SUITE)
    apt.update()
    debs = apt.download(GUEST_PACKAGES, f"Debian {GUEST_SUITE} arm64 {' + '.join(GUEST_PACKAGES)}", progress)
    download_bytes = sum(deb.stat().st_size for deb in debs)
    rootfs = work / "rootfs"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(rootfs)], check=True, capture_output=True)
    shutil.rmtree(work / "apt")
    for entry in rootfs.iterdir():  # flatten: the rootfs is the component folder itself
        entry.rename(work / entry.name)
    rootfs.rmdir()
    if not (work / GUEST_PYTHON).exists():
        raise SpnasError(f"Debian arm64 packages unpacked without {GUEST_PYTHON}")
    return {"component": "rootfs", "suite": GUEST_SUITE, "packages": [deb.name for deb in debs],
            "download_bytes": download_bytes, "source": f"{mirror()} {GUEST_SUITE}"}


def host_litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError as exc:
        raise SpnasError("--arm64 compares with the host's LiteRT: pip install 'spnas[tflite]'") from exc


def pip_download_command(litert_version: str, destination: Path, requirement: str | None = None,
                         platforms: tuple[str, ...] = (WHEEL_PLATFORM,), no_deps: bool = False) -> list[str]:
    """``pip download`` of aarch64 cp311 wheels: ai-edge-litert by default, else ``requirement``."""
    return [sys.executable, "-m", "pip", "download", "--progress-bar", "off",
            "--disable-pip-version-check", "--only-binary=:all:",
            *(arg for platform in platforms for arg in ("--platform", platform)),
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *(["--no-deps"] if no_deps else []),
            "--dest", str(destination), requirement or f"ai-edge-litert=={litert_version}"]


def build_wheels(work: Path, litert_version: str, progress: Progress, requirement: str | None = None,
                 platforms: tuple[str, ...] = (WHEEL_PLATFORM,), no_deps: bool = False) -> dict:
    """ai-edge-litert (the host's version, so only the CPU differs) and its deps, unzipped for PYTHONPATH;
    or ``requirement`` (ONNX Runtime, without deps: the LiteRT set has numpy, protobuf and flatbuffers)."""
    downloads = work / "downloads"
    requirement = requirement or f"ai-edge-litert=={litert_version}"
    progress(f"arm64: downloading aarch64 wheels {requirement}{'' if no_deps else ' + its dependencies'} "
             "from PyPI (about 31 MB for LiteRT, 23 MB for ONNX Runtime) ...")
    start = time.perf_counter()
    result = subprocess.run(pip_download_command(litert_version, downloads, requirement, platforms, no_deps),
                            capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        if NETWORK_ERRORS.search(result.stderr):
            raise SpnasError(f"no network: cannot download aarch64 wheels from PyPI ({last[:160]}); "
                             "the first --arm64 run needs PyPI")
        if "from versions: none" in result.stderr:
            raise SpnasError(f"no {requirement} wheel for {platforms[0]} cp311 found: no network "
                             "to PyPI, or that version has none (the first --arm64 run needs PyPI)")
        raise SpnasError(f"pip could not download {requirement} for {platforms[0]} ({last[:160]})")
    wheels = sorted(downloads.glob("*.whl"))
    download_bytes = sum(wheel.stat().st_size for wheel in wheels)
    progress(f"arm64: downloaded {len(wheels)} wheels, {megabytes(download_bytes)}, "
             f"in {time.perf_counter() - start:.1f}s")
    site = work / "site-packages"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    shutil.rmtree(downloads)
    return {"component": "wheels", "wheels": [wheel.name for wheel in wheels], "download_bytes": download_bytes,
            "platform": platforms[0], "source": "PyPI"}


def host_ort_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime")
    except PackageNotFoundError as exc:
        raise SpnasError("the CPU tiers compare with the host's ONNX Runtime: pip install 'spnas[onnx]'") from exc


# ---------------------------------------------------------------- choosing qemu


def system_qemu() -> Path | None:
    for name in QEMU_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def choose_qemu(root: Path, progress: Progress) -> tuple[Path, tuple[int, int, int], str]:
    """``$SPNAS_QEMU``, else a cached download, else a qemu >= 8 on PATH, else download qemu-user 10.

    A qemu older than 8 on PATH is used (with the workarounds) only when the download fails.
    """
    explicit = os.environ.get("SPNAS_QEMU")
    if explicit:
        return Path(explicit), qemu_version(explicit), "$SPNAS_QEMU"
    cached = root / "qemu-user"
    if component_ready(cached):
        return cached / "qemu-aarch64", tuple(read_manifest(cached)["version"]), read_manifest(cached)["source"]
    on_path = system_qemu()
    path_version = qemu_version(on_path) if on_path else None
    if path_version and path_version >= CPUINFO_EMULATED_SINCE:
        return on_path, path_version, f"{on_path} (PATH)"
    try:
        require_tools("apt-get", "dpkg-deb", "dpkg", why="downloading qemu-user")
        manifest = build_component(cached, lambda work: build_qemu(work, progress))
    except SpnasError as exc:
        if on_path:
            progress(f"arm64: warning: using the old {on_path} {'.'.join(map(str, path_version))} with workarounds "
                     f"(qemu-user 10 download failed: {exc})")
            return on_path, path_version, f"{on_path} (PATH)"
        root_hint = "" if os.geteuid() == 0 else " (as root)"
        raise SpnasError(f"no qemu-aarch64 on PATH and none could be downloaded: {exc}. Install qemu-user >= 8"
                         f"{root_hint}: apt-get install -t {QEMU_SUITE} qemu-user, or set $SPNAS_QEMU") from exc
    return cached / "qemu-aarch64", tuple(manifest["version"]), manifest["source"]


# ---------------------------------------------------------------- the whole environment

SMOKE_TEST = ("import json, platform, sys, numpy, ai_edge_litert.interpreter as i; from importlib.metadata import "
              "version; print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
              "'litert': version('ai-edge-litert'), 'numpy': numpy.__version__}))")


def smoke_test(env: Arm64Env, cpu: str = "cortex-a55") -> dict:
    """Import LiteRT in the guest once: proves the environment and reports what the guest runs."""
    command = env.command(cpu, "-c", SMOKE_TEST)
    result = subprocess.run(command, capture_output=True, text=True, env=env.environment(), timeout=600)
    if result.returncode != 0:
        raise SpnasError(f"the emulated aarch64 Python does not start ({guest_error(result)})")
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    if facts["machine"] != "aarch64":
        raise SpnasError(f"the emulated Python reports machine {facts['machine']!r}, not aarch64")
    return facts


def guest_error(result: subprocess.CompletedProcess) -> str:
    """One line for a failed guest process: its last error line, or the signal that killed it."""
    if result.returncode < 0 or result.returncode in (132, 134, 139):
        return f"exit code {result.returncode}: the emulated process crashed"
    lines = [line for line in (result.stderr or "").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else f"exit code {result.returncode}"


def run_summary(command: list[str], where: str, what: str, env: dict | None = None,
                timeout: float = 600) -> tuple[dict, str]:
    """Run a runner script (host or guest) that ends its stdout with a JSON summary: (summary, stderr);
    a timeout or a failure is one line naming ``where`` and ``what`` ran."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SpnasError(f"{where}: {what} did not finish within {timeout:g}s") from exc
    if result.returncode != 0:
        raise SpnasError(f"{where}: {what} run failed ({guest_error(result)})")
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def prepare_env(root: Path | None = None, *, progress: Progress = stderr_progress,
                onnxruntime: bool = False) -> Arm64Env:
    """Ready the cached environment, downloading what is missing (about 110 MB the first time; with
    ``onnxruntime``, ONNX Runtime's aarch64 wheel too, 23 MB)."""
    root = Path(root) if root else cache_root()
    litert_version = host_litert_version()
    ort_version = host_ort_version() if onnxruntime else None
    dirs = component_dirs(root, litert_version, ort_version)
    missing = [name for name, path in dirs.items() if not component_ready(path)]
    start = time.perf_counter()
    if missing:
        progress(f"arm64: preparing the emulated aarch64 environment in {root} (missing: {', '.join(missing)}; "
                 "first run downloads about 110 MB: qemu-user 63 MB, Debian arm64 python3.11 16 MB, "
                 "LiteRT wheels 31 MB; about 190 MB on disk)")
    qemu, version, source = choose_qemu(root, progress)
    if not component_ready(dirs["rootfs"]):
        require_tools("apt-get", "dpkg-deb", why="downloading the Debian arm64 Python")
        build_component(dirs["rootfs"], lambda work: build_rootfs(work, progress))
    if not component_ready(dirs["wheels"]):
        build_component(dirs["wheels"], lambda work: build_wheels(work, litert_version, progress))
    if ort_version and not component_ready(dirs["onnxruntime"]):
        build_component(dirs["onnxruntime"], lambda work: build_wheels(
            work, litert_version, progress, f"onnxruntime=={ort_version}", ORT_WHEEL_PLATFORMS, no_deps=True))
    env = Arm64Env(root=root, qemu=qemu, qemu_version=version, qemu_source=source, rootfs=dirs["rootfs"],
                   site_packages=dirs["wheels"] / "site-packages", litert_version=litert_version,
                   extra_site_packages=(dirs["onnxruntime"] / "site-packages",) if ort_version else ())
    if missing:
        facts = smoke_test(env)
        progress(f"arm64: environment ready in {time.perf_counter() - start:.0f}s: qemu {env.version_text}, "
                 f"{facts['machine']} Python {facts['python']}, LiteRT {facts['litert']}")
    return env
