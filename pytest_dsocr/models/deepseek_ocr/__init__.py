"""DeepSeek-OCR (v1): sizes (spec.py), torch module (modeling.py), checkpoint key map (checkpoint.py)."""
