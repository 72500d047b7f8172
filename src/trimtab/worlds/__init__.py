"""Worlds: where the data and the reference models come from (synthetic, real text, your model)."""
