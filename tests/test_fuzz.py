"""Property-based fuzzing of the parsers that read outside input (targets and contracts: ``tests/fuzz_targets.py``).

A small budget per target keeps this a test; ``benchmarks/fuzz.py`` runs the same targets
coverage-guided for minutes. Inputs are valid seeds (recorded ``benchmark_model`` logs, a
report, images in every mode) with random byte edits, plus raw random bytes.
"""

from __future__ import annotations

import pytest
from fuzz_targets import TARGETS, seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = {"adb": 300, "report": 300, "image": 120}


@st.composite
def mutated(draw, seed_list: list[bytes]) -> bytes:
    """A seed with a few random edits: flipped bytes, a cut, an insertion, or a splice with another seed."""
    data = bytearray(draw(st.sampled_from(seed_list)))
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif edit == "cut":
            data = data[:at]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            other = draw(st.sampled_from(seed_list))
            data = data[:at] + other[draw(st.integers(0, max(len(other) - 1, 0))):]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_keeps_its_contract(name):
    seed_list = seeds(name)
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES[name], deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(mutated(seed_list), st.binary(max_size=512)))
    def check(data):
        target(data)

    for seed in seed_list:  # every seed itself is valid input
        target(seed)
    check()


def test_found_by_fuzzing_a_cut_run_stats_line_is_refused():
    """A per-run statistics line cut after ``min=`` used to give a record with no mean and no median."""
    from spnas.bench.adb import BenchmarkOutputError, parse_benchmark_output

    text = ("count=10 first=98871 curr=90412 min=89934 max=98871 avg=91471 std=2561\n"
            "count=50 first=80987 curr=80341 min=11-24 10:15:31.002\n"
            "Inference timings in us: Init: 4108, First inference: 98871, Warmup (avg): 91471, "
            "Inference (avg): 80660\n")
    with pytest.raises(BenchmarkOutputError, match="cannot parse benchmark_model output line 'count=50"):
        parse_benchmark_output(text)


def test_found_by_fuzzing_a_count_0_block_does_not_hide_the_timings():
    """A ``count=0`` statistics line after the real one used to replace it, leaving no mean and no median."""
    from spnas.bench.adb import parse_benchmark_output

    text = ("count=50 first=80987 curr=80341 min=79512 max=83374 avg=80660.1 std=806\n"
            "count=0 runs)\n"
            "Average inference timings in us: Warmup: 91471, Init: 4108, Inference: 80660.1\n")
    assert parse_benchmark_output(text)["latency_ms"]["mean"] == 80.6601
