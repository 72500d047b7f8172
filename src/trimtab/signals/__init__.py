"""Alignment signals: judges that score (prompt, response) pairs in [0, 1] (1 = aligned)."""

from trimtab.signals.base import REASONS, AlignmentSignal, Verdict

__all__ = ["REASONS", "AlignmentSignal", "Verdict"]
