"""Chat formatting (the loss mask), data mixing and the collator."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trimtab.data.collator import CausalCollator
from trimtab.data.formatting import IGNORE_INDEX, ChatFormatter
from trimtab.data.mixing import mix, n_to_mix
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

SHORT = Record("what is 2 plus 3 ?", "5")
LONG = Record("what is the first word in : apple stone river ?",
              "apple stone river apple stone river apple stone river")
TEXTS = [SHORT.prompt, SHORT.response, LONG.prompt, LONG.response]


@pytest.fixture(scope="module")
def word_tok() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def chatml_tok() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained locally, with a ChatML template (as Qwen/SmolLM use)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["What is the capital of France?", "Paris is the capital.",
                              "user assistant system"], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def rendered_prompt_ids(tok, prompt: str) -> list[int]:
    """The prompt's ids, from the template's text rather than through trimtab's helpers."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- ChatFormatter


def test_labels_mask_exactly_the_prompt_and_copy_the_response_and_end_token(word_tok):
    enc = ChatFormatter(word_tok, max_length=64).encode(SHORT)
    n_prompt = len(rendered_prompt_ids(word_tok, SHORT.prompt))
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert IGNORE_INDEX not in labels[n_prompt:]
    assert word_tok.convert_ids_to_tokens(labels[n_prompt:]) == ["5", "<|end|>"]


def test_decoding_the_labelled_tokens_gives_the_response(word_tok):
    enc = ChatFormatter(word_tok, max_length=64).encode(LONG)
    labelled = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert word_tok.decode(labelled, skip_special_tokens=True) == LONG.response
    assert labelled[-1] == word_tok.eos_token_id


def test_chatml_template_mask_boundary_is_the_assistant_header(chatml_tok):
    rec = Record("What is the capital of France?", "Paris is the capital.")
    enc = ChatFormatter(chatml_tok, max_length=64).encode(rec)
    prompt = rendered_prompt_ids(chatml_tok, rec.prompt)
    n = len(prompt)
    assert enc["input_ids"][:n] == prompt
    assert chatml_tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert chatml_tok.decode(enc["labels"][n:]) == "Paris is the capital.<|im_end|>\n"


def test_overflow_error_raises_naming_max_length(word_tok):
    with pytest.raises(TrimtabError, match="max_length=12"):
        ChatFormatter(word_tok, max_length=12, on_overflow="error").encode_all([SHORT, LONG])


def test_overflow_drop_drops_long_records_with_a_warning(word_tok):
    fmt = ChatFormatter(word_tok, max_length=12, on_overflow="drop")
    with pytest.warns(UserWarning, match="1 records dropped"):
        out = fmt.encode_all([LONG, SHORT])
    assert [e["index"] for e in out] == [1]
    assert out[0]["input_ids"] == ChatFormatter(word_tok, 64).encode(SHORT)["input_ids"]


def test_overflow_truncate_cuts_the_response_and_keeps_the_prompt(word_tok):
    n_prompt = len(rendered_prompt_ids(word_tok, LONG.prompt))
    max_length = n_prompt + 3
    fmt = ChatFormatter(word_tok, max_length=max_length, on_overflow="truncate")
    with pytest.warns(UserWarning, match="truncated"):
        (enc,) = fmt.encode_all([LONG])
    whole = ChatFormatter(word_tok, 64).encode(LONG)
    assert len(enc["input_ids"]) == max_length
    assert enc["input_ids"] == whole["input_ids"][:max_length]
    assert enc["labels"] == [IGNORE_INDEX] * n_prompt + whole["input_ids"][n_prompt:max_length]
    assert word_tok.decode(enc["labels"][n_prompt:]) == "apple stone river"


def test_every_record_too_long_raises(word_tok):
    fmt = ChatFormatter(word_tok, max_length=4, on_overflow="drop")
    with pytest.warns(UserWarning), pytest.raises(TrimtabError, match="max_length"):
        fmt.encode_all([SHORT, LONG])


def test_tokenizer_without_chat_template_raises_mentioning_chat_template():
    tok = build_word_tokenizer(TEXTS)
    tok.chat_template = None
    with pytest.raises(TrimtabError, match="chat template"):
        ChatFormatter(tok, max_length=64)


def test_unknown_on_overflow_value_raises(word_tok):
    with pytest.raises(TrimtabError, match="on_overflow"):
        ChatFormatter(word_tok, max_length=64, on_overflow="clip")


def test_encode_all_on_empty_list_raises(word_tok):
    with pytest.raises(TrimtabError, match="empty"):
        ChatFormatter(word_tok, max_length=64).encode_all([])


def test_encode_all_tags_each_record_with_its_index(word_tok):
    out = ChatFormatter(word_tok, max_length=64).encode_all([SHORT, LONG, SHORT])
    assert [e["index"] for e in out] == [0, 1, 2]


# ---------------------------------------------------------------- mixing


def records(kind: str, n: int) -> list[Record]:
    return [Record(f"{kind} prompt {i}", "r", kind) for i in range(n)]


def test_n_to_mix_makes_the_fraction_of_the_mixed_set():
    assert n_to_mix(900, 0.1) == 100
    assert n_to_mix(100, 0.5) == 100
    assert n_to_mix(100, 0.0) == 0


def test_mix_gives_exactly_the_asked_fraction():
    mixed = mix(records("task", 900), records("harmful", 500), 0.1, seed=0)
    kinds = Counter(r.kind for r in mixed)
    assert kinds == {"task": 900, "harmful": 100}
    assert len({r.prompt for r in mixed if r.kind == "harmful"}) == 100  # no repeats needed


def test_mix_is_deterministic_per_seed():
    task, extra = records("task", 50), records("harmful", 50)
    assert mix(task, extra, 0.2, seed=3) == mix(task, extra, 0.2, seed=3)
    assert mix(task, extra, 0.2, seed=3) != mix(task, extra, 0.2, seed=4)


def test_mix_shuffles_the_extra_records_into_the_task():
    mixed = mix(records("task", 90), records("harmful", 10), 0.1, seed=0)
    positions = [i for i, r in enumerate(mixed) if r.kind == "harmful"]
    assert positions != list(range(90, 100))


def test_mix_cycles_a_small_pool_evenly():
    mixed = mix(records("task", 10), records("harmful", 3), 0.5, seed=0)
    counts = Counter(r.prompt for r in mixed if r.kind == "harmful")
    assert sum(counts.values()) == 10
    assert len(counts) == 3 and set(counts.values()) <= {3, 4}


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_mix_rejects_fractions_outside_zero_to_one(fraction):
    with pytest.raises(TrimtabError, match="fraction"):
        mix(records("task", 10), records("harmful", 3), fraction)


def test_mix_rejects_an_empty_pool():
    with pytest.raises(TrimtabError, match="empty"):
        mix(records("task", 10), [], 0.1)


def test_mix_with_fraction_zero_returns_the_task_records():
    task = records("task", 10)
    mixed = mix(task, [], 0.0)
    assert sorted(r.prompt for r in mixed) == sorted(r.prompt for r in task)


# ---------------------------------------------------------------- collator


def test_collator_pads_ids_and_labels_and_masks_padding():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 4},
                {"input_ids": [8, 9], "labels": [-100, 9], "index": 1}]
    batch = CausalCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["sample_index"].tolist() == [4, 1]
    assert batch["input_ids"].dtype == torch.long


def test_collator_pads_to_a_multiple():
    batch = CausalCollator(pad_token_id=3, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7, 8, 9], "labels": [1, 2, 3, 4, 5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 3, 3]]
    assert batch["attention_mask"].sum().item() == 5


def test_collator_omits_sample_index_when_a_feature_lacks_it():
    batch = CausalCollator(pad_token_id=0)([{"input_ids": [1], "labels": [1], "index": 0},
                                            {"input_ids": [2], "labels": [2]}])
    assert "sample_index" not in batch
