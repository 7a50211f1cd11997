"""Pixel 1 latency predicted from the Single-Path NAS authors' per-layer table.

The authors measured every (position, kernel, expansion) choice of their MnasNet-style
supernet on a Pixel 1 (TFLite, batch 1, one thread) and searched against the sum.  We
map ``spnas.arch.decode_arch()`` onto the table's 22 positions the way their search code
does: position 0 is the first depthwise-separable block, 1..20 are four searchable
positions for each of the five middle stages, 21 is the 320-channel block.  Stem, head,
classifier and positions 0 and 21 cost a fixed 19.5999 ms; a stage with fewer than four
blocks leaves its trailing positions as identity, which cost nothing.

The table is the authors' data (Apache-2.0); it is read from where the user keeps it and
never bundled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from spnas.arch import BlockSpec, decode_arch
from spnas.errors import SpnasError

LUT_ENV = "SPNAS_PIXEL1_LUT"
LUT_NAME = "pixel1_runtime_model.json"
LUT_SOURCE = "github.com/dstamoulis/single-path-nas, file nas-search/pixel1_runtime_model.json (Apache-2.0)"
FIXED_MS = 19.5999  # stem + head + classifier + positions 0 and 21, from the authors' search code
PAPER_MS = 79.48  # Single-Path NAS paper, Table 1: 74.96 % top-1 at 79.48 ms on Pixel 1
NUM_POSITIONS = 22
POSITIONS_PER_STAGE = 4
# Searchable stages of the supernet: (output channels, stride of the first block).
SUPERNET_STAGES = ((24, 2), (40, 2), (80, 2), (96, 1), (192, 2))
FIRST_BLOCK_CHANNELS = 16
LAST_BLOCK_CHANNELS = 320


@dataclass(frozen=True)
class Position:
    """One table position: the block placed there (None = skipped) and its cost."""

    index: int
    block: BlockSpec | None
    option: int | None  # table column: 0 = k3 e3, 1 = k3 e6, 2 = k5 e3, 3 = k5 e6
    ms: float
    fixed: bool = False  # positions 0 and 21 are inside the fixed cost

    @property
    def label(self) -> str:
        if self.block is None:
            return "skip"
        if self.block.block_type == "ds":
            return f"ds k{self.block.kernel_size}"
        return f"ir k{self.block.kernel_size} e{self.block.exp_ratio:g}"


@dataclass(frozen=True)
class Prediction:
    positions: list[Position]
    lut_path: Path
    fixed_ms: float = FIXED_MS
    paper_ms: float = PAPER_MS

    @property
    def total_ms(self) -> float:
        return self.fixed_ms + sum(p.ms for p in self.positions)

    def to_dict(self) -> dict:
        return {
            "target": "pixel1",
            "predicted_ms": round(self.total_ms, 4),
            "paper_ms": self.paper_ms,
            "fixed_ms": self.fixed_ms,
            "lut": str(self.lut_path),
            "lut_source": LUT_SOURCE,
            "positions": [{"position": p.index, "block": p.block.name if p.block else None, "choice": p.label,
                           "option": p.option, "ms": round(p.ms, 4), "in_fixed_cost": p.fixed}
                          for p in self.positions],
        }


def candidate_paths(explicit: str | Path | None = None, cwd: Path | None = None) -> list[Path]:
    """Where the table is looked for, in order: --lut, $SPNAS_PIXEL1_LUT, shared data folders."""
    if explicit:
        return [Path(explicit)]
    if os.environ.get(LUT_ENV):
        return [Path(os.environ[LUT_ENV])]
    paths = []
    if os.environ.get("SPNAS_SHARED_DATA"):
        paths.append(Path(os.environ["SPNAS_SHARED_DATA"]) / LUT_NAME)
    project_root = Path(__file__).resolve().parents[2]
    paths += [project_root.parent / "shared" / "data" / LUT_NAME,
              (cwd or Path.cwd()).resolve().parent / "shared" / "data" / LUT_NAME]
    return list(dict.fromkeys(paths))


def find_lut(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    candidates = candidate_paths(explicit, cwd)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise SpnasError(f"Pixel 1 latency table not found (looked at {looked}); get {LUT_NAME} from {LUT_SOURCE} "
                     f"and pass --lut PATH or set {LUT_ENV}")


def load_lut(path: str | Path) -> dict[int, dict[int, float]]:
    """Read and validate the table: keys "0".."21", each with options "0".."3" in milliseconds."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpnasError(f"Pixel 1 latency table {path}: not readable JSON ({exc})") from exc
    if not isinstance(raw, dict) or sorted(raw, key=str) != sorted(str(i) for i in range(NUM_POSITIONS)):
        raise SpnasError(f"Pixel 1 latency table {path}: expected keys \"0\"..\"{NUM_POSITIONS - 1}\"")
    table = {}
    for key, options in raw.items():
        if not isinstance(options, dict) or sorted(options) != ["0", "1", "2", "3"]:
            raise SpnasError(f"Pixel 1 latency table {path}: position {key} must map options \"0\"..\"3\" to ms")
        try:
            table[int(key)] = {int(option): float(ms) for option, ms in options.items()}
        except (TypeError, ValueError) as exc:
            raise SpnasError(f"Pixel 1 latency table {path}: position {key} has a non-numeric latency") from exc
    return table


def table_option(block: BlockSpec) -> int:
    """The table column of an MBConv block; anything outside the search space is refused."""
    if block.block_type != "ir" or block.kernel_size not in (3, 5) or block.exp_ratio not in (3, 6):
        raise SpnasError(f"{block.name} ({block.block_type} k{block.kernel_size} e{block.exp_ratio:g}) is outside "
                         "the Pixel 1 table's search space (ir, kernel 3/5, expansion 3/6)")
    return (2 if block.kernel_size == 5 else 0) + (1 if block.exp_ratio == 6 else 0)


def map_positions(blocks: list[BlockSpec], lut: dict[int, dict[int, float]]) -> list[Position]:
    """Place the blocks on the 22 positions, checking the architecture matches the supernet."""
    by_stage: dict[int, list[BlockSpec]] = {}
    for block in blocks:
        by_stage.setdefault(block.stage, []).append(block)
    expected_stages = len(SUPERNET_STAGES) + 2
    if sorted(by_stage) != list(range(expected_stages)):
        raise SpnasError(f"the Pixel 1 table needs {expected_stages} stages, the architecture has {len(by_stage)}")
    first, last = by_stage[0], by_stage[expected_stages - 1]
    if len(first) != 1 or first[0].block_type != "ds" or first[0].out_chs != FIRST_BLOCK_CHANNELS:
        raise SpnasError(f"the Pixel 1 table's position 0 is one ds block with {FIRST_BLOCK_CHANNELS} channels")
    if len(last) != 1 or last[0].out_chs != LAST_BLOCK_CHANNELS:
        raise SpnasError(f"the Pixel 1 table's position 21 is one block with {LAST_BLOCK_CHANNELS} channels")
    positions = [Position(0, first[0], None, 0.0, fixed=True)]
    for stage, (channels, stride) in enumerate(SUPERNET_STAGES, start=1):
        stage_blocks = by_stage[stage]
        if len(stage_blocks) > POSITIONS_PER_STAGE:
            raise SpnasError(f"stage {stage} has {len(stage_blocks)} blocks; the Pixel 1 table has "
                             f"{POSITIONS_PER_STAGE} positions per stage")
        if stage_blocks[0].out_chs != channels or stage_blocks[0].stride != stride:
            raise SpnasError(f"stage {stage} ({stage_blocks[0].out_chs} channels, stride {stage_blocks[0].stride}) "
                             f"does not match the supernet's ({channels} channels, stride {stride})")
        for slot in range(POSITIONS_PER_STAGE):
            index = 1 + (stage - 1) * POSITIONS_PER_STAGE + slot
            if slot < len(stage_blocks):
                option = table_option(stage_blocks[slot])
                positions.append(Position(index, stage_blocks[slot], option, lut[index][option]))
            else:
                positions.append(Position(index, None, None, 0.0))
    positions.append(Position(NUM_POSITIONS - 1, last[0], None, 0.0, fixed=True))
    return positions


def predict(lut_path: str | Path | None = None, blocks: list[BlockSpec] | None = None) -> Prediction:
    path = find_lut(lut_path)
    return Prediction(map_positions(blocks if blocks is not None else decode_arch(), load_lut(path)), path)


def breakdown_table(prediction: Prediction) -> str:
    from spnas.console import format_table

    rows = [["stem+head+pos 0+pos 21", "(fixed)", "", f"{prediction.fixed_ms:.2f}"]]
    for position in prediction.positions:
        if position.fixed:
            continue
        rows.append([f"position {position.index}", position.block.name if position.block else "-",
                     position.label, f"{position.ms:.2f}"])
    table = format_table(["table position", "block", "choice", "Pixel 1 ms"], rows)
    delta = (prediction.total_ms / prediction.paper_ms - 1) * 100
    return (f"{table}\n\npredicted Pixel 1 latency (TFLite, 1 thread): {prediction.total_ms:.2f} ms "
            f"(paper: {prediction.paper_ms:.2f} ms, {delta:+.1f} %)\ntable: {prediction.lut_path}")
