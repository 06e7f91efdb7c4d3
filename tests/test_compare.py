"""``python -m pytest_dsocr compare RUN_A RUN_B``: exit codes, tables, the command registry."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
from report_factory import make_metrics, noisy_runs, typed

import pytest_dsocr.__main__ as cli
from pytest_dsocr.report.metrics import write_metrics

REPO = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| Stage | Pages | Baseline (ms) | Current (ms) | Ratio [95% CI] | Verdict |"


def save(path: Path, factor: float = 1.0, seed: int = 0, **kwargs) -> Path:
    write_metrics(path, typed(make_metrics(noisy_runs(20, factor=factor, seed=seed), **kwargs)))
    return path


@pytest.fixture
def runs(tmp_path: Path):
    return {
        "base": save(tmp_path / "base", seed=1),
        "same": save(tmp_path / "same", seed=2),
        "slow": save(tmp_path / "slow", 1.2, seed=2),
        "full": save(tmp_path / "full", seed=2, size="full"),
        "v2": save(tmp_path / "v2", seed=2, family="deepseek_ocr2"),
    }


def test_no_regression_exits_0(runs, capsys):
    assert cli.main(["compare", str(runs["base"]), str(runs["same"] / "metrics.json")]) == 0
    out = capsys.readouterr().out
    assert TABLE_HEADER in out and "passed" in out


def test_regression_exits_1(runs, capsys):
    assert cli.main(["compare", str(runs["base"]), str(runs["slow"])]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "| prefill |" in out


def test_threshold_options(runs, capsys):
    assert cli.main(["compare", str(runs["base"]), str(runs["slow"]), "--threshold", "50%"]) == 0
    args = ["compare", str(runs["base"]), str(runs["slow"]), "--threshold", "50%", "--stage-threshold", "decode=5%"]
    assert cli.main(args) == 1
    assert "decode" in capsys.readouterr().out


def test_too_few_pages_fail_unless_inconclusive_warns(tmp_path, capsys):
    base = tmp_path / "base3"
    write_metrics(base, typed(make_metrics(noisy_runs(3, seed=1))))
    current = tmp_path / "cur3"
    write_metrics(current, typed(make_metrics(noisy_runs(3, seed=2))))
    assert cli.main(["compare", str(base), str(current)]) == 1
    assert "FAILED (inconclusive)" in capsys.readouterr().out
    assert cli.main(["compare", str(base), str(current), "--inconclusive", "warn"]) == 0
    out = capsys.readouterr().out
    assert "INCONCLUSIVE (warn)" in out and "insufficient samples" in out
    cli.main(["compare", str(base), str(current), "--min-pages", "3", "--inconclusive", "warn"])
    out = capsys.readouterr().out
    assert "3 paired" in out and "| insufficient samples (" not in out


def test_other_model_size_is_refused_unless_forced(runs, capsys):
    assert cli.main(["compare", str(runs["base"]), str(runs["full"])]) == 2
    err = capsys.readouterr().err
    assert "model.size (tiny vs full)" in err and "--force" in err
    assert cli.main(["compare", str(runs["base"]), str(runs["full"]), "--force"]) == 0


def test_other_family_gives_a_side_by_side_table(runs, capsys):
    assert cli.main(["compare", str(runs["base"]), str(runs["v2"])]) == 0
    out = capsys.readouterr().out
    assert "Family comparison" in out and "| Stage | A: deepseek_ocr tiny | B: deepseek_ocr2 tiny | B / A |" in out
    assert "Verdict" not in out and "FAILED" not in out and "passed" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-run"], "RUN_B=missing-run"),
        (["SAME", "--threshold", "ten"], "--threshold='ten'"),
        (["SAME", "--stage-threshold", "decode"], "--stage-threshold='decode'"),
        (["SAME", "--inconclusive", "maybe"], "--inconclusive='maybe': expected one of fail, warn"),
        (["SAME", "--min-pages", "1"], "--min-pages='1'"),
    ],
)
def test_bad_input_exits_2_with_one_line(runs, capsys, args, message):
    args = [str(runs["same"]) if a == "SAME" else a for a in args]
    assert cli.main(["compare", str(runs["base"]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_as_a_module_in_a_subprocess(runs):
    command = [sys.executable, "-m", "pytest_dsocr", "compare", str(runs["base"]), str(runs["slow"])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stderr
    assert TABLE_HEADER in done.stdout
    listing = subprocess.run([sys.executable, "-m", "pytest_dsocr", "--help"], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
    assert listing.returncode == 0 and "compare" in listing.stdout


def test_a_command_is_one_registry_line(monkeypatch, capsys):
    module = types.ModuleType("fake_report_command")
    module.add_arguments = lambda parser: parser.add_argument("path")
    module.run = lambda args: print(f"report of {args.path}") or 3
    monkeypatch.setitem(sys.modules, "fake_report_command", module)
    monkeypatch.setitem(cli.COMMANDS, "nsys-report", ("fake_report_command", "summarise an nsys capture"))
    assert cli.main(["nsys-report", "run/nsys"]) == 3
    assert "report of run/nsys" in capsys.readouterr().out


def test_no_command_is_a_usage_error():
    with pytest.raises(SystemExit) as excinfo:
        cli.main([])
    assert excinfo.value.code == 2
