"""Stage outputs: vendor markup parsing, box rendering, result.mmd, info.json, predictions.jsonl."""
