"""Task accuracy on a labelled validation set: the reference and every artifact, and what int8 costs.

``--val`` is an ImageFolder (one sub-folder per class, named as the classes) or a CSV file with
``file,label`` columns (files relative to the CSV's folder).  Labels are class names, checked
against the model's before anything runs; the set must share no file (by sha256) with the
calibration images.  Images are decoded and preprocessed in bounded batches, on worker processes
for large sets (a background thread otherwise), the next batch while the models run the current
one; the models run a batch side by side on a thread pool (one per core; the runtimes release
the GIL), each artifact fed ``RUNTIME_BATCH`` images per call where its runtime takes batches
(``spnas.export.load_runner``), and all finish a batch before the next, so memory stays flat
whatever the set's size; only per-image outcomes are kept.

Per artifact the report gives top-1/top-5, the top-1 drop against the reference in percentage
points with a 95 % interval from a paired bootstrap of the per-image outcomes (exact for paired
0/1 outcomes: the resampled differences are multinomial over {lost, same, gained}), McNemar's
discordant counts and exact p-value, and the images whose top-1 correctness flipped.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.intake import UnusableImage, load_pixels, shown, walk_images
from spnas.io import sha256_file
from spnas.preprocess import PreprocessSpec

BATCH = 32
RUNTIME_BATCH = 8  # images per runtime call where a runtime takes batches (each image's logits as at batch 1)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
FLIPS_LISTED = 50  # flipped images named per artifact in the report (all are counted)
PARALLEL_FROM = 512  # images from which decoding moves to worker processes by default


@dataclass
class ValSet:
    """A labelled validation set: files and class indices, nothing decoded."""

    source: Path
    layout: str  # "imagefolder" | "csv"
    files: list[Path]
    labels: np.ndarray  # int64 class index per file
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def shown(self, path: Path) -> str:
        root = self.source if self.layout == "imagefolder" else self.source.parent
        try:
            return str(path.relative_to(root))
        except ValueError:
            return str(path)


def load_valset(source: str | Path, class_names: list[str]) -> ValSet:
    """An ImageFolder or a ``file,label`` CSV; an unknown label is an error naming the first few."""
    source = Path(source)
    index = {name: i for i, name in enumerate(class_names)}
    if source.is_dir():
        layout = "imagefolder"
        pairs = [(path, path.relative_to(source).parts[0]) for path in walk_images(source)
                 if len(path.relative_to(source).parts) > 1]
    elif source.is_file() and source.suffix.lower() == ".csv":
        layout = "csv"
        pairs = _csv_pairs(source)
    else:
        raise SpnasError(f"--val {shown(source)}: expected a folder with one sub-folder per class or a file,label CSV")
    if not pairs:
        raise SpnasError(f"--val {shown(source)}: no labelled images")
    unknown = list(dict.fromkeys(label for _, label in pairs if label not in index))
    if unknown:
        listed = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SpnasError(f"--val {shown(source)}: {len(unknown)} label(s) not among the model's {len(class_names)} "
                         f"classes: {listed}")
    return ValSet(source, layout, [p for p, _ in pairs], np.asarray([index[label] for _, label in pairs], np.int64),
                  list(class_names))


def _csv_pairs(path: Path) -> list[tuple[Path, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpnasError(f"--val {shown(path)}: unreadable CSV ({exc.__class__.__name__})") from exc
    if rows and not {"file", "label"} <= set(rows[0]):
        raise SpnasError(f"--val {shown(path)}: needs 'file' and 'label' columns, found {', '.join(rows[0])}")
    missing = [row["file"] for row in rows if not (path.parent / row["file"]).is_file()]
    if missing:
        raise SpnasError(f"--val {shown(path)}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
    return [(path.parent / row["file"], row["label"]) for row in rows]


def check_disjoint(valset: ValSet, manifest: list[dict], what: str = "calibration") -> None:
    """No validation file may be a calibration image (compared by sha256, so copies and renames count)."""
    taken = {entry["sha256"] for entry in manifest}
    shared = [path for path in valset.files if sha256_file(path) in taken]
    if shared:
        raise SpnasError(f"--val: {len(shared)} validation image(s) are also {what} images (same sha256), e.g. "
                         f"{shown(valset.shown(shared[0]))}; keep the validation set disjoint from calibration")


def _decode(job: tuple[str, PreprocessSpec]):
    path, spec = job
    try:
        return load_pixels(path, spec), None
    except UnusableImage as exc:
        return None, str(exc)


def stream(valset: ValSet, spec: PreprocessSpec, *, batch: int = BATCH, workers: int | None = None
           ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """(kept indices, uint8 crops, skip reasons) per batch; the next batch decodes while the caller runs this one."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if len(valset) >= PARALLEL_FROM else 0
    chunks = [range(start, min(start + batch, len(valset))) for start in range(0, len(valset), batch)]

    def jobs(chunk):
        return [(str(valset.files[i]), spec) for i in chunk]

    def collect(chunk, results):
        kept = [i for i, (crop, _) in zip(chunk, results, strict=True) if crop is not None]
        crops = [crop for crop, _ in results if crop is not None]
        pixels = np.stack(crops) if crops else np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
        return np.asarray(kept, np.int64), pixels, [why for _, why in results if why is not None]

    if workers <= 0:  # one background thread: Pillow decodes without the GIL
        from concurrent.futures import ThreadPoolExecutor

        def decode_chunk(chunk):
            return [_decode(job) for job in jobs(chunk)]

        with ThreadPoolExecutor(1) as thread:
            pending = thread.submit(decode_chunk, chunks[0]) if chunks else None
            for number, chunk in enumerate(chunks):
                results = pending.result()
                if number + 1 < len(chunks):
                    pending = thread.submit(decode_chunk, chunks[number + 1])
                yield collect(chunk, results)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = pool.map_async(_decode, jobs(chunks[0])) if chunks else None
        for number, chunk in enumerate(chunks):
            results = pending.get()
            if number + 1 < len(chunks):
                pending = pool.map_async(_decode, jobs(chunks[number + 1]), chunksize=max(1, batch // workers))
            yield collect(chunk, results)


class Outcomes:
    """Per-image top-1 prediction and top-5 hit of one model, filled batch by batch."""

    def __init__(self, n: int):
        self.top1 = np.full(n, -1, np.int64)
        self.top5 = np.zeros(n, bool)

    def add(self, indices: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> None:
        k = min(5, logits.shape[1])
        best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        self.top1[indices] = best[:, 0]
        self.top5[indices] = (best == labels[:, None]).any(axis=1)


def evaluate_all(valset: ValSet, spec: PreprocessSpec, reference, runners: dict[str, object], *,
                 progress: Callable[[str], object] | None = None, batch: int = BATCH,
                 workers: int | None = None, warn: Callable[[str], object] | None = None) -> dict:
    """One streamed pass: the reference and every runner on each batch.  Returns the report's ``validation``
    block (``reference`` and ``n_images``) and ``artifacts``: {name: accuracy block}."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(valset)
    models = {"reference": reference, **runners}
    outcomes = {name: Outcomes(n) for name in models}
    used = np.zeros(n, bool)
    skipped: list[str] = []
    start = last = time.perf_counter()
    done = 0
    pool = ThreadPoolExecutor(max(1, min(len(models), os.cpu_count() or 1)), thread_name_prefix="spnas-val")
    with pool, _torch_on_one_thread():
        for indices, pixels, reasons in stream(valset, spec, batch=batch, workers=workers):
            for reason in reasons:
                skipped.append(reason)
                if warn:
                    warn(f"skipping image {reason}")
            if len(indices):
                labels = valset.labels[indices]
                logits = {name: pool.submit(model.run, pixels) for name, model in models.items()}
                for name, result in logits.items():
                    outcomes[name].add(indices, result.result(), labels)
                used[indices] = True
            done += len(indices) + len(reasons)
            now = time.perf_counter()
            if progress and (now - last > 5 or done == n):
                rate = done / max(now - start, 1e-9)
                progress(f"validation: {done}/{n} images, {rate:.1f} images/s, ETA {_clock((n - done) / rate)}")
                last = now
    if not used.any():
        raise SpnasError(f"--val {shown(valset.source)}: no usable image; first skipped: {skipped[0]}")
    labels = valset.labels[used]
    ref = outcomes["reference"]
    ref_top1 = ref.top1[used] == labels
    block = {"source": str(valset.source), "layout": valset.layout, "n_images": int(used.sum()),
             "n_skipped": len(skipped), "reference": _accuracy(ref_top1, ref.top5[used]),
             "interval": f"95 % paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})"}
    files = [valset.files[i] for i in np.flatnonzero(used)]
    artifacts = {}
    for name in runners:
        top1 = outcomes[name].top1[used] == labels
        artifacts[name] = {**_accuracy(top1, outcomes[name].top5[used]),
                           **paired_drop(ref_top1, top1),
                           "flipped": _flips(ref_top1, top1, ref.top1[used], outcomes[name].top1[used], labels,
                                             files, valset)}
    return {"validation": block, "artifacts": artifacts}


@contextlib.contextmanager
def _torch_on_one_thread():
    """The models already share the cores side by side; PyTorch's two OpenMP threads spin-wait besides: the
    reference took 0.14 CPU s per image on two threads, 0.04 on one (same logits bit for bit)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _accuracy(top1: np.ndarray, top5: np.ndarray) -> dict:
    return {"top1": float(top1.mean()), "top5": float(top5.mean())}


def paired_drop(reference: np.ndarray, artifact: np.ndarray) -> dict:
    """Top-1 drop (reference minus artifact, percentage points) with its 95 % paired-bootstrap interval."""
    n = len(reference)
    lost = int((reference & ~artifact).sum())
    gained = int((~reference & artifact).sum())
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    counts = rng.multinomial(n, [lost / n, 1 - (lost + gained) / n, gained / n], size=BOOTSTRAP_RESAMPLES)
    drops = 100.0 * (counts[:, 0] - counts[:, 2]) / n
    low, high = np.percentile(drops, [2.5, 97.5])
    return {"top1_drop_pct": 100.0 * (lost - gained) / n, "top1_drop_ci95_pct": [float(low), float(high)],
            "mcnemar": {"lost": lost, "gained": gained, "p_value": _mcnemar_exact(lost, gained)}}


def _mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(b, c) + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def _flips(ref_ok, art_ok, ref_pred, art_pred, labels, files, valset: ValSet) -> dict:
    changed = np.flatnonzero(ref_ok != art_ok)
    names = valset.class_names
    listed = [{"file": valset.shown(files[i]), "label": names[labels[i]], "reference": names[ref_pred[i]],
               "artifact": names[art_pred[i]], "now": "correct" if art_ok[i] else "wrong"}
              for i in changed[:FLIPS_LISTED]]
    return {"n": int(len(changed)), "images": listed}


def accuracy_gate(entry: dict, max_drop_pct: float | None) -> None:
    """``--max-accuracy-drop PCT``: fail the artifact when the drop's upper 95 % bound is above PCT."""
    accuracy = entry.get("accuracy")
    if max_drop_pct is None or accuracy is None:
        return
    high = accuracy["top1_drop_ci95_pct"][1]
    entry["gate"]["thresholds"]["max_accuracy_drop_pct"] = max_drop_pct
    if high > max_drop_pct:
        entry["gate"]["failures"].append(f"top-1 drop upper 95 % bound {high:.2f} pp > {max_drop_pct:g} pp")
        entry["gate"]["status"] = "failed"
        entry["passed"] = False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def validate_entries(valset: ValSet, spec: PreprocessSpec, reference, entries: list[dict], root: Path, console, *,
                     max_accuracy_drop: float | None = None, workers: int | None = None) -> dict:
    """Accuracy of the reference and of every report entry's artifact (paths relative to ``root``); gates them
    at ``max_accuracy_drop`` and returns the report's ``validation`` block."""
    from spnas.export import load_runner

    runners = {entry["path"]: load_runner(Path(root) / entry["path"], batch=RUNTIME_BATCH) for entry in entries}
    with console.step(f"task accuracy on {len(valset)} validation images ({len(runners)} artifact(s))"):
        result = evaluate_all(valset, spec, reference, runners, progress=console.info, warn=console.warn,
                              workers=workers)
    for entry in entries:
        entry["accuracy"] = result["artifacts"][entry["path"]]
        accuracy_gate(entry, max_accuracy_drop)
    return result["validation"]


def accuracy_table(validation: dict, entries: list[dict]) -> str:
    from spnas.console import format_table

    reference = validation["reference"]
    rows = [["reference (PyTorch)", f"{reference['top1']:.3f}", f"{reference['top5']:.3f}", "-", "-", "-"]]
    for entry in entries:
        acc = entry["accuracy"]
        low, high = acc["top1_drop_ci95_pct"]
        rows.append([Path(entry["path"]).name, f"{acc['top1']:.3f}", f"{acc['top5']:.3f}",
                     f"{acc['top1_drop_pct']:+.2f}", f"[{low:+.2f}, {high:+.2f}]", str(acc["flipped"]["n"])])
    return (f"\ntask accuracy on {validation['n_images']} validation images ({validation['source']}):\n"
            + format_table(["model", "top1", "top5", "drop pp", "95% CI pp", "flipped"], rows))
