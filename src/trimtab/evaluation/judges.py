"""Evaluation judges: what turns (record, response) into a label the metrics count.

A judge labels each response `refusal`, `abstention`, `harmful`, `correct` or `wrong`.
The synthetic world's oracle is one; the refusal-keyword judge below works for any text.
"""

from __future__ import annotations

from typing import Protocol

from trimtab.data.records import Record


class Judge(Protocol):
    name: str

    def classify(self, record: Record, response: str) -> str: ...
