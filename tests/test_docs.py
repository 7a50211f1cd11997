"""The docs run: every shell command and Python example in README.md and docs/*.md is run here, or
says above its fence why it cannot be (``<!-- not run: reason -->``), and every relative link resolves.

Each page's blocks run in order in one scratch folder (later blocks use what earlier ones wrote), with
the documented placeholders made real from ../shared/data (see ``make_placeholders``); the commands themselves
are run as written. A command that already ran on an earlier page is not run again: the files it wrote
there are copied in, so the README and the pages share one export of each kind.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "console"}
RUNNABLE_PROGRAMS = {"spnas-export", "spnas-verify", "spnas-bench"}
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
EXPECTED_EXIT = re.compile(r"#.*\bexits? (\d+)\b")
OUTPUT_FLAGS = {"--json", "--markdown", "--plot", "--node-data"}
# Commands whose exit code here is not 0, and why (a command's own "# exit N" comment documents it too).
EXIT_HERE = {
    "spnas-verify exports/spnasnet_100_int8.tflite --val val.csv --max-accuracy-drop 1":
        (1, "17 validation images: the drop's 95 % interval is far wider than 1 point, so the gate fails"),
}

# The placeholders the docs use, made real in each page's folder by make_placeholders():
#   my-finetune/       -> ../shared/data/spnasnet_100_coarse8 (timm's save_for_hf folder, 8 classes)
#   photos/            -> labels.csv rows 0-15: 16 photographs (12 calibrate, 4 check parity)
#   val/               -> coarse8.csv rows 600-799, every 12th: an ImageFolder, a sub-folder per class
#   val.csv            -> the same images as file,label rows (files under val-images/)
#   $SPNAS_PIXEL1_LUT  -> ../shared/data/pixel1_runtime_model.json (the docs: "pass --lut or set it")
# Calibration and validation images are disjoint (spnas refuses a validation image that is also a
# calibration image) and few, so that each export costs seconds, not minutes.
CALIB_ROWS = range(0, 16)
VAL_ROWS = range(600, 800, 12)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        """The block's shell commands: continuation lines joined, comments and console output dropped."""
        lines = self.text.replace("\\\n", " ").splitlines()
        if self.lang == "console":
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def doc_blocks(page: Path) -> list[Block]:
    """The fenced shell and Python blocks of ``page``, each with the not-run reason above it, if any."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        lang = match.group(1)
        if lang not in SHELL_LANGS | {"python"}:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        reason = NOT_RUN.match(before)
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, lang, match.group(2),
                           reason.group(1) if reason else None))
    return found


BLOCKS = [block for page in PAGES for block in doc_blocks(page)]
RUN_BLOCKS = [block for block in BLOCKS if block.not_run is None]


def program(command: str) -> str:
    return Path(shlex.split(command, comments=True)[0]).name


def expected_exit(command: str) -> int:
    """0, the exit code the command's own comment documents (``# exit 2, ...``), or ``EXIT_HERE``'s."""
    if command in EXIT_HERE:
        return EXIT_HERE[command][0]
    found = EXPECTED_EXIT.search(command)
    return int(found.group(1)) if found else 0


def documented_outputs(command: str) -> list[str]:
    """The files a successful command says it writes: ``--out D`` (D/report.json), ``--json P`` etc."""
    words = shlex.split(command, comments=True)
    outputs = []
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--out":
            outputs.append(str(Path(value) / "report.json"))
        elif flag in OUTPUT_FLAGS:
            outputs.append(value)
    return outputs


def make_placeholders(folder: Path) -> dict:
    """Make the docs' placeholders real in ``folder`` from ../shared/data; returns the extra environment."""
    imagenet = shared_path("imagenet-sample")
    rows = list(csv.DictReader((imagenet / "labels.csv").read_text().splitlines()))
    coarse = {row["file"]: row["label"] for row in csv.DictReader((imagenet / "coarse8.csv").read_text().splitlines())}
    (folder / "my-finetune").symlink_to(shared_path("spnasnet_100_coarse8"), target_is_directory=True)
    (folder / "photos").mkdir()
    for index in CALIB_ROWS:
        (folder / "photos" / rows[index]["file"]).symlink_to(imagenet / rows[index]["file"])
    (folder / "val-images").mkdir()
    lines = ["file,label"]
    for index in VAL_ROWS:
        name = rows[index]["file"]
        (folder / "val" / coarse[name]).mkdir(parents=True, exist_ok=True)
        (folder / "val" / coarse[name] / name).symlink_to(imagenet / name)
        (folder / "val-images" / name).symlink_to(imagenet / name)
        lines.append(f"val-images/{name},{coarse[name]}")
    (folder / "val.csv").write_text("\n".join(lines) + "\n")
    return {"SPNAS_PIXEL1_LUT": str(shared_path("pixel1_runtime_model.json"))}


def files_state(folder: Path) -> dict:
    return {path: (path.lstat().st_mtime_ns, path.lstat().st_size)
            for path in folder.rglob("*") if not path.is_dir() or path.is_symlink()}


@dataclass
class Outcome:
    failures: list[str]


class Workspace:
    """One page's scratch folder: its blocks run in document order, each at most once; a command (or a
    Python block) already run on an earlier page is not run again, the files it wrote are copied in."""

    def __init__(self, folder: Path, cache: dict, cache_root: Path):
        folder.mkdir()
        self.folder, self.cache, self.cache_root = folder, cache, cache_root
        self.env = {**os.environ, **make_placeholders(folder),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.outcomes: dict[Block, Outcome] = {}

    def outcome(self, block: Block) -> Outcome:
        for earlier in doc_blocks(block.page):
            if earlier.not_run is None and earlier not in self.outcomes:
                self.outcomes[earlier] = self._run_or_reuse(earlier)
            if earlier == block:
                return self.outcomes[block]
        raise AssertionError(f"{block.name} is not on its page")

    def _run_or_reuse(self, block: Block) -> Outcome:
        steps = [("python", block.text)] if block.lang == "python" else [("shell", c) for c in block.commands()]
        return Outcome([failure for step in steps for failure in self._step(*step)])

    def _step(self, kind: str, text: str) -> list[str]:
        """Run one command (or Python block), or copy in what the same text wrote on an earlier page."""
        if (kind, text) in self.cache:
            failures, saved = self.cache[kind, text]
            shutil.copytree(saved, self.folder, symlinks=True, dirs_exist_ok=True)
            return failures
        before = files_state(self.folder)
        failures = self._python(text) if kind == "python" else self._shell(text)
        saved = self.cache_root / str(len(self.cache))
        saved.mkdir(parents=True)
        for path, state in files_state(self.folder).items():
            if before.get(path) != state:
                (saved / path.relative_to(self.folder)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, saved / path.relative_to(self.folder), follow_symlinks=False)
        self.cache[kind, text] = (failures, saved)
        return failures

    def _python(self, code: str) -> list[str]:
        done = self._call([sys.executable, "-c", code])
        return [] if done.returncode == 0 else [f"python exited {done.returncode}: {tail(done)}"]

    def _shell(self, command: str) -> list[str]:
        done = self._call(["bash", "-c", command])
        wanted = expected_exit(command)
        if done.returncode != wanted:
            return [f"{command}\n  exited {done.returncode}, documented {wanted}: {tail(done)}"]
        return [f"{command}\n  did not write {output}" for output in documented_outputs(command)
                if wanted == 0 and not (self.folder / output).exists()]

    def _call(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=900)


def tail(done: subprocess.CompletedProcess) -> str:
    return (done.stderr or done.stdout)[-1500:]


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """A workspace per page, made on first use; blocks already run on another page are reused."""
    root, cache, made = tmp_path_factory.mktemp("docs"), {}, {}

    def workspace(page: Path) -> Workspace:
        if page not in made:
            made[page] = Workspace(root / page.stem.lower(), cache, root / ".ran")
        return made[page]
    return workspace


def test_every_block_is_run_or_says_why_not():
    """A shell block the tests cannot run must say why; one they run must hold only runnable commands."""
    unexplained = [f"{block.name}: {command}" for block in RUN_BLOCKS if block.lang != "python"
                   for command in block.commands() if program(command) not in RUNNABLE_PROGRAMS]
    assert not unexplained, ("commands neither run by tests/test_docs.py nor marked "
                             "<!-- not run: reason --> above their block:\n" + "\n".join(unexplained))
    for block in RUN_BLOCKS:
        if block.lang == "python":
            compile(block.text, block.name, "exec")


# The README's examples run in every CI run; the docs/ pages' (the same commands with more flags: --explain,
# --val, the bench) cost a few more minutes of CPU, so they are the slow doc runs (pytest -m slow).
@pytest.mark.parametrize("block", [pytest.param(block, id=block.name, marks=[pytest.mark.slow] * (
    block.page.name != "README.md" or block.page.parent != ROOT)) for block in RUN_BLOCKS])
def test_block_runs(block, workspaces):
    failures = workspaces(block.page).outcome(block).failures
    assert not failures, f"{block.name}:\n" + "\n".join(failures)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            seen[base] = seen.get(base, -1) + 1
            if seen[base]:
                seen[f"{base}-{seen[base]}"] = 0
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_five_minute_read_with_the_ci_test_command():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make test" in text  # .ci/run runs "the README's test command"
