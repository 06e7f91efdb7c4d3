"""--dsocr-profiler=nsys with nsys on PATH re-runs the selected tests under nsys (a stand-in nsys here)."""

import os
import stat
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FAKE_NSYS = """#!/bin/sh
# Records how it was called and writes no report, as nsys does when nothing was captured.
printf '%s\\n' "$@" > "{argv_file}"
exit 0
"""


def test_relaunch_runs_nsys_with_the_capture_range_and_reports_missing_output(pytester, tmp_path, monkeypatch,
                                                                              inference_modules_loaded):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv.txt"
    nsys = bin_dir / "nsys"
    nsys.write_text(FAKE_NSYS.format(argv_file=argv_file))
    nsys.chmod(nsys.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pytester.makepyfile(test_nsys_stage=(BENCHMARKS / "test_nsys.py").read_text())
    run_dir = tmp_path / "run"
    result = pytester.runpytest("-m", "nsys", "--dsocr-profiler=nsys", "--dsocr-run-dir", str(run_dir),
                                "-p", "no:cacheprovider")
    argv = argv_file.read_text().splitlines()
    assert argv[0] == "profile"
    assert "--capture-range=cudaProfilerApi" in argv
    assert "pytest" in argv and f"--dsocr-run-dir={run_dir}" in argv  # the child gets the same run dir
    result.stdout.fnmatch_lines(["*pytest-dsocr: Nsight Systems*", "*nsys wrote no report*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
