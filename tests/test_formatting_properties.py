"""Hostile input to the chat formatting: random unicode, empty and very long fields.

Every case is either encoded with the loss exactly on the response tokens, or rejected
with a TrimtabError that names the fix; a response is never cut without a warning.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trimtab.data.formatting import IGNORE_INDEX, ChatFormatter, prompt_ids
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

TOKENIZER = build_word_tokenizer(["what is the first word in : apple stone river ?", "apple"])
words = st.one_of(st.sampled_from(["apple", "stone", "what", "?", ":"]), st.text(min_size=1))
field = st.lists(words, max_size=200).map(" ".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(prompt="", response="apple apple apple", max_length=8, overflow="drop")  # fits exactly
@given(prompt=field, response=field, max_length=st.integers(8, 300),
       overflow=st.sampled_from(["error", "truncate", "drop"]))
def test_any_text_is_encoded_exactly_or_refused_with_a_message(prompt, response, max_length,
                                                               overflow):
    formatter = ChatFormatter(TOKENIZER, max_length, overflow)
    record = Record(prompt, response)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = formatter.encode_all([record])
    except TrimtabError as err:
        assert "max_length" in str(err)  # the only reason to refuse here: length, with fix
        return
    (enc,) = out
    n_prompt = len(prompt_ids(TOKENIZER, prompt))
    assert len(enc["input_ids"]) == len(enc["labels"]) <= max_length
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]  # loss on the response only
    full = formatter.encode(Record(prompt, response)) if overflow == "error" else None
    untruncated = ChatFormatter(TOKENIZER, 10**6, "error").encode(record)
    if len(untruncated["input_ids"]) > max_length:  # it was cut ("drop" would have refused)
        assert overflow == "truncate"
        assert any("truncated" in str(w.message) for w in caught)  # never cut silently
    if full is not None:
        assert full == {k: v for k, v in enc.items() if k != "index"}


@pytest.mark.parametrize("overflow", ["error", "truncate", "drop"])
def test_an_empty_training_set_is_refused(overflow):
    with pytest.raises(TrimtabError, match="empty"):
        ChatFormatter(TOKENIZER, 64, overflow).encode_all([])
