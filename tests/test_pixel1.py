"""spnas-bench --target pixel1: the authors' per-layer table mapped onto our architecture description."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import shared_path

from spnas.arch import decode_arch
from spnas.bench import pixel1
from spnas.cli.bench import main
from spnas.errors import SpnasError


@pytest.fixture(scope="module")
def lut_path():
    return shared_path("pixel1_runtime_model.json")


@pytest.fixture
def no_lut_env(monkeypatch):
    monkeypatch.delenv(pixel1.LUT_ENV, raising=False)
    monkeypatch.delenv("SPNAS_SHARED_DATA", raising=False)


def test_spnasnet_100_predicts_80_44_ms(lut_path):
    prediction = pixel1.predict(lut_path)
    assert round(prediction.total_ms, 2) == 80.44
    assert prediction.paper_ms == 79.48


def test_positions_follow_the_supernet(lut_path):
    positions = pixel1.predict(lut_path).positions
    assert [p.index for p in positions] == list(range(22))
    assert positions[0].fixed and positions[21].fixed and positions[0].ms == positions[21].ms == 0
    assert positions[0].block.name == "blocks.0.0" and positions[21].block.name == "blocks.6.0"
    skipped = [p.index for p in positions if p.block is None]
    assert skipped == [4]  # stage 1 has three blocks: its fourth position is identity and free
    chosen = {p.index: (p.block.name, p.label, p.option) for p in positions if p.block and not p.fixed}
    assert chosen[1] == ("blocks.1.0", "ir k3 e3", 0)
    assert chosen[5] == ("blocks.2.0", "ir k5 e6", 3)
    assert chosen[14] == ("blocks.4.1", "ir k5 e3", 2)
    assert chosen[20] == ("blocks.5.3", "ir k5 e6", 3)
    table = pixel1.load_lut(lut_path)
    assert all(p.ms == table[p.index][p.option] for p in positions if p.option is not None)


def test_another_architecture_moves_the_prediction(lut_path):
    blocks = decode_arch()
    widened = [replace(b, exp_ratio=6.0) if b.name == "blocks.1.0" else b for b in blocks]
    table = pixel1.load_lut(lut_path)
    delta = pixel1.predict(lut_path, widened).total_ms - pixel1.predict(lut_path, blocks).total_ms
    assert delta == pytest.approx(table[1][1] - table[1][0])


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: [replace(x, kernel_size=7) if x.name == "blocks.3.1" else x for x in b], "outside the Pixel 1 table"),
    (lambda b: b[:6] + [replace(b[5], index=4)] + b[6:], "stage 2 has 5 blocks"),
    (lambda b: [replace(x, out_chs=48) if x.stage == 2 else x for x in b], "does not match the supernet"),
    (lambda b: b[:-1], "needs 7 stages"),
])
def test_architectures_outside_the_table_are_refused(lut_path, change, message):
    with pytest.raises(SpnasError, match=message):
        pixel1.predict(lut_path, change(decode_arch()))


def test_cli_prints_breakdown_and_paper_figure(lut_path, tmp_path, capsys):
    out = tmp_path / "pixel1.json"
    assert main(["--target", "pixel1", "--lut", str(lut_path), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "80.44 ms" in stdout and "paper: 79.48 ms" in stdout
    assert "position 20" in stdout and "blocks.5.3" in stdout and "skip" in stdout
    document = json.loads(out.read_text())
    assert document["mode"] == "pixel1" and document["predicted_ms"] == pytest.approx(80.4411)
    assert len(document["positions"]) == 22 and document["lut_source"].startswith("github.com/dstamoulis")


def test_lut_search_order(lut_path, no_lut_env, monkeypatch, tmp_path):
    monkeypatch.setenv(pixel1.LUT_ENV, str(lut_path))
    assert pixel1.find_lut() == lut_path
    with pytest.raises(SpnasError, match="explicit.json"):  # an explicit --lut wins over the environment
        pixel1.find_lut(tmp_path / "explicit.json")
    monkeypatch.delenv(pixel1.LUT_ENV)
    project = tmp_path / "work" / "project"
    project.mkdir(parents=True)
    shared = tmp_path / "work" / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / pixel1.LUT_NAME).write_text(lut_path.read_text())
    assert shared / pixel1.LUT_NAME in pixel1.candidate_paths(cwd=project)
    monkeypatch.chdir(project)
    found = pixel1.find_lut()
    assert found.is_file() and found.name == pixel1.LUT_NAME  # ../shared/data of the project or of the cwd


def test_missing_lut_is_one_line_with_its_source(no_lut_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(pixel1.LUT_ENV, str(tmp_path / "nowhere.json"))
    assert main(["--target", "pixel1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "nowhere.json" in err and "dstamoulis/single-path-nas" in err and "nas-search/pixel1_runtime_model.json" \
        in err and "Apache-2.0" in err and "--lut" in err


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "not readable JSON"),
    ('{"0": {"0": 1}}', 'expected keys "0".."21"'),
    (json.dumps({str(i): {"0": 1, "1": 1, "2": 1} for i in range(22)}), 'position 0 must map options'),
    (json.dumps({str(i): {"0": 1, "1": 1, "2": 1, "3": "fast"} for i in range(22)}), "non-numeric latency"),
])
def test_malformed_lut(tmp_path, content, message):
    path = tmp_path / "lut.json"
    path.write_text(content)
    with pytest.raises(SpnasError, match=message):
        pixel1.load_lut(path)


def test_target_excludes_artifacts(capsys):
    with pytest.raises(SystemExit):
        main(["--target", "pixel1", "model.tflite"])
    assert "takes no artifacts" in capsys.readouterr().err


def test_other_input_sizes_are_not_applicable(tmp_path, capsys):
    """The table was measured at 224: a 192 px fine-tune gets "not applicable", not a made-up number."""
    out = tmp_path / "pixel1.json"
    assert main(["--target", "pixel1", "--input-size", "192", "--json", str(out)]) == 0
    assert "not applicable" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["predicted_ms"] is None and document["status"].startswith("not applicable")
