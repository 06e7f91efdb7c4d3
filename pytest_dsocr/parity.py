"""Vendor parity: our instrumented decode vs the model's own ``generate`` on the same inputs.

The profiled path replaces the vendor's ``model.infer()``; it is only worth profiling if it
produces the same greedy tokens and the same boxes. Optionally, outputs recorded elsewhere
(``vendor_parity.reference``: JSONL lines ``{"image_path": ..., "text_raw": ...}``) are
compared with a tolerance: box count within ``box_count_tolerance``, the first K boxes within
``box_tolerance`` of the page size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pytest_dsocr.decoding import token_budget
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.outputs.markup import parse_markup
from pytest_dsocr.records import Sample

log = logging.getLogger(__name__)

ENGAGED_MESSAGE = "DeepSeek-OCR: vendor-parity decode engaged (no vendor infer)"


@dataclass(frozen=True)
class ReferenceCheck:
    """Comparison with one recorded reference output."""

    box_count_ours: int
    box_count_reference: int
    boxes_compared: int
    max_box_error: float  # largest coordinate difference over the compared boxes, as a share of the page side
    ok: bool


@dataclass(frozen=True)
class ParityResult:
    sample_id: str
    image_path: str
    tokens_ours: int
    tokens_reference: int
    tokens_equal: bool
    first_mismatch: int | None  # index of the first differing token
    boxes_ours: int
    boxes_reference: int
    boxes_equal: bool  # count and every coordinate
    reference: ReferenceCheck | None = None

    @property
    def ok(self) -> bool:
        return self.tokens_equal and self.boxes_equal and (self.reference is None or self.reference.ok)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def warn_if_no_boxes(texts: Iterable[str]) -> bool:
    """One WARNING when no output of the run holds a single box span; True when it warned.
    Reads the outputs one at a time and stops at the first box."""
    count = 0
    for text in texts:
        if parse_markup(text, 1, 1).spans:
            return False
        count += 1
    if not count:
        return False
    log.warning("DeepSeek-OCR: none of the %d outputs holds a <|ref|>/<|det|> box; check the decode path "
                "against the model's own generate with `pytest benchmarks -m vendor_parity`", count)
    return True


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def load_reference(path: str | Path) -> dict[str, str]:
    """Absolute image path -> recorded text_raw; a bad file or line is an error naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DsocrError(f"vendor_parity.reference={path}: file not found")
    entries: dict[str, str] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            entries[str(Path(item["image_path"]).expanduser().resolve())] = str(item["text_raw"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DsocrError(f"vendor_parity.reference={path}: line {number} is not "
                             f"{{\"image_path\": ..., \"text_raw\": ...}} ({exc})") from None
    return entries


def compare_reference(ours_text: str, reference_text: str, width: int, height: int,
                      count_tolerance: int, box_tolerance: float, first_k: int) -> ReferenceCheck:
    ours = [box for span in parse_markup(ours_text, width, height).spans for box in span.boxes]
    ref = [box for span in parse_markup(reference_text, width, height).spans for box in span.boxes]
    compared = min(first_k, len(ours), len(ref))
    error = 0.0
    for a, b in zip(ours[:compared], ref[:compared]):
        for i, (u, v) in enumerate(zip(a, b)):
            side = width if i % 2 == 0 else height
            error = max(error, abs(u - v) / side)
    ok = abs(len(ours) - len(ref)) <= count_tolerance and error <= box_tolerance
    return ReferenceCheck(len(ours), len(ref), compared, error, ok)


def check_sample(session, sample: Sample, reference: dict[str, str] | None = None) -> ParityResult:
    """Run ``sample`` through the engine and through ``generate``; compare tokens and boxes."""
    cfg = session.config.vendor_parity
    adapter = session.adapter
    run = session.run(sample, stage="vendor_parity")
    image = adapter.load(sample.image_path)
    prepared = adapter.prepare(image)
    budget = token_budget(session.max_new_tokens, prepared.input_ids.shape[1], adapter.max_positions)
    ref_ids = adapter.generate_reference(prepared, session.policy, budget)
    ours_ids = list(run.token_ids)
    ref_text = adapter.decode_text(ref_ids)
    width, height = image.size
    ours_boxes = [s.boxes for s in parse_markup(run.text_raw, width, height).spans]
    ref_boxes = [s.boxes for s in parse_markup(ref_text, width, height).spans]
    check = None
    if reference is not None:
        recorded = reference.get(str(Path(sample.image_path).resolve()))
        if recorded is not None:
            check = compare_reference(run.text_raw, recorded, width, height, cfg.box_count_tolerance,
                                      cfg.box_tolerance, cfg.compare_first_boxes)
    return ParityResult(
        sample_id=sample.sample_id, image_path=str(sample.image_path),
        tokens_ours=len(ours_ids), tokens_reference=len(ref_ids), tokens_equal=ours_ids == ref_ids,
        first_mismatch=first_mismatch(ours_ids, ref_ids),
        boxes_ours=sum(len(b) for b in ours_boxes), boxes_reference=sum(len(b) for b in ref_boxes),
        boxes_equal=ours_boxes == ref_boxes, reference=check,
    )


def render_report(results: list[ParityResult]) -> str:
    lines = ["# Vendor parity", "",
             "Our instrumented decode vs the model's own `generate` on the same prepared inputs (greedy).", "",
             "| Sample | Tokens (ours / ref) | Tokens equal | First mismatch | Boxes (ours / ref) | Boxes equal | Reference | OK |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref = "-" if r.reference is None else (
            f"{r.reference.box_count_ours}/{r.reference.box_count_reference} boxes, "
            f"max err {r.reference.max_box_error:.1%}")
        lines.append(f"| {r.sample_id} | {r.tokens_ours} / {r.tokens_reference} | {r.tokens_equal} | "
                     f"{'-' if r.first_mismatch is None else r.first_mismatch} | {r.boxes_ours} / {r.boxes_reference} | "
                     f"{r.boxes_equal} | {ref} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines) + "\n"
