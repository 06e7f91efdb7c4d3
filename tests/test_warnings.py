"""A default run calls transformers through its current API: no FutureWarning, DeprecationWarning
or deprecation log line comes out of our calls (both families, engine and generate paths)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
AS_ERRORS = ["-W", "error::FutureWarning", "-W", "error::DeprecationWarning"]
QUICK = [
    "-p", "no:cacheprovider",
    "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1",
    "--dsocr-set", "infer.max_new_tokens=3",
    "--dsocr-set", "infer.warmup_rounds=0",
]


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("model", ["deepseek_ocr/tiny", "deepseek_ocr2/tiny"])
def test_default_stages_emit_no_deprecation(pytester, inference_modules_loaded, tmp_path, model):
    for stage in ("direct_inference", "vendor_parity"):
        pytester.makepyfile(**{f"test_{stage}": (BENCHMARKS / f"test_{stage}.py").read_text()})
    recorder = Recorder()
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(recorder)
    # transformers says "deprecated" through logger.warning_once: forget what it already said.
    hf_logging.warning_once.cache_clear()
    try:
        result = pytester.runpytest(*AS_ERRORS, *QUICK, "-m", "direct_inference or vendor_parity",
                                    "--dsocr-set", f"model={model}", "--dsocr-run-dir", str(tmp_path / "run"))
    finally:
        logger.removeHandler(recorder)
    result.assert_outcomes(passed=2)
    deprecations = [m for m in recorder.messages if "deprecat" in m.lower()]
    assert not deprecations, deprecations
