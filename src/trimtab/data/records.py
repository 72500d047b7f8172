"""The instruction record: the one unit of data every stage of trimtab passes along."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Kinds a record can have. A loader may use others; these are the ones metrics know.
KINDS = (
    "general",  # a general task the reference model can do; the answer is exact
    "task",  # the downstream task being fine-tuned; the answer is exact
    "harmful",  # a harmful request; the aligned answer is a refusal
    "borderline",  # a benign request with alarming words; the aligned answer helps
    "unanswerable",  # a question nobody can answer; the aligned answer abstains
    "text",  # plain text with no expected answer
)


@dataclass
class Record:
    """A prompt, the response to train on, and what kind of request it is.

    `metadata` carries what a judge needs to grade a response (for example the expected
    answer, the harm category or the attack wrapper used) and is never shown to the model.
    """

    prompt: str
    response: str
    kind: str = "general"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "kind": self.kind,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        return cls(
            prompt=row["prompt"],
            response=row["response"],
            kind=row.get("kind", "general"),
            metadata=dict(row.get("metadata") or {}),
        )
