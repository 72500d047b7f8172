"""A guard model that answers "safe"/"unsafe" (Llama-Guard style) or a 1-5 rating (`guard:PATH`).

Two ways to ask: `rubric` puts the judge template (the conversation plus the question) in
one user turn through the model's chat template, which suits any instruction model;
`conversation` hands the (user, assistant) turns to the tokenizer's own chat template, which
is how Llama Guard's template builds its safety prompt. The answer is read greedily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trimtab.config import CheckedConfig, option
from trimtab.data.formatting import _ids, check_chat_template
from trimtab.errors import TrimtabError
from trimtab.signals.base import UNSCORED, AlignmentSignal, Verdict
from trimtab.signals.rubric import RUBRICS, parse_answer, render, template_for


@dataclass
class GuardConfig(CheckedConfig):
    rubric: str = option("binary", "binary: safe/unsafe; scale: a 1-5 harm rating mapped to "
                                   "[0, 1]", choices=RUBRICS)
    chat_format: str = option("rubric", "rubric: the template as one user turn; conversation: "
                                        "the turns through the tokenizer's own (guard) template",
                              choices=("rubric", "conversation"))
    template: str | None = option(None, "judge template with {prompt} and {response}; none: "
                                        "the built-in one of the rubric")
    safe_word: str = option("safe", "the answer that means aligned (binary rubric)")
    unsafe_word: str = option("unsafe", "the answer that means misaligned (binary rubric)")
    max_new_tokens: int = option(8, "tokens generated for an answer", min=1)
    batch_size: int = option(16, "conversations per generate call", min=1)
    on_failure: str = option("raise", "an answer that is no verdict: raise, or leave the "
                                      "pair unscored (logged)", choices=("raise", "unscored"))
    trust_remote_code: bool = option(False, "run model code shipped with the checkpoint")


class GuardSignal(AlignmentSignal):
    name = "guard"

    def __init__(self, path: str | Path, config: GuardConfig | None = None) -> None:
        from trimtab.training.config import TrainConfig
        from trimtab.training.run import load_model, load_tokenizer

        self.config = c = config or GuardConfig()
        self.path = str(path)
        self.template = template_for(c.rubric, c.template)
        self.tokenizer = load_tokenizer(self.path, c.trust_remote_code)
        check_chat_template(self.tokenizer, f"the guard tokenizer at {path}")
        self.model = load_model(self.path, TrainConfig(trust_remote_code=c.trust_remote_code))
        self.model.eval()
        self.last_answers: list[str] = []

    def _encode(self, prompt: str, response: str) -> list[int]:
        if self.config.chat_format == "conversation":
            turns = [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": response}]
        else:
            turns = [{"role": "user", "content": render(self.template, prompt, response)}]
        return _ids(self.tokenizer, turns, add_generation_prompt=True)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        from trimtab.evaluation.generation import stop_token_ids
        from trimtab.training.sampling import generate_ids

        c = self.config
        encoded = [self._encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        new = generate_ids(self.model, encoded, pad_token_id=self.tokenizer.pad_token_id,
                           stop_ids=stop_token_ids(self.model, self.tokenizer),
                           max_new_tokens=c.max_new_tokens, batch_size=c.batch_size)
        answers = [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        self.last_answers = answers
        out = []
        for i, text in enumerate(answers):
            verdict = parse_answer(text, c.rubric, c.safe_word, c.unsafe_word)
            if verdict is None:
                if c.on_failure == "raise":
                    raise TrimtabError(
                        f"the guard model at {self.path} answered {text!r} for pair {i}, which "
                        f"is no {c.rubric} verdict; check the model, chat_format and template "
                        "(or set on_failure=unscored)."
                    )
                import logging

                logging.getLogger(__name__).warning("guard answer %r is no verdict; pair %d "
                                                    "left unscored", text, i)
                verdict = UNSCORED
            out.append(verdict)
        return out
