"""pytest-dsocr: profile DeepSeek-OCR inference stage by stage under pytest."""

__version__ = "0.1.0"
