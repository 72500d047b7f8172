"""trimtab: fine-tune language models without losing their alignment."""

__version__ = "0.1.0"
