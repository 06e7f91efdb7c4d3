"""DeepSeek-OCR-2: sizes (spec.py), transformers' native model (modeling.py), processor settings
(processing.py), tokenizer (v1's), engine adapter (adapter.py)."""
