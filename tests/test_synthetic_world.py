"""The synthetic world: determinism, split hygiene, the oracle's labels and the word tokenizer."""

from __future__ import annotations

import os

import pytest

from trimtab.errors import TrimtabError
from trimtab.worlds.synthetic import SyntheticOracle, SyntheticWorld, SyntheticWorldConfig
from trimtab.worlds.synthetic import vocabulary as V
from trimtab.worlds.synthetic.tokenizer import ROLE_TOKENS, build_word_tokenizer

# Sized like the quick world (`trimtab.demo.QUICK_WORLD`), with its 6 borderline objects.
SMALL = dict(n_known_entities=16, n_unknown_train=8, n_unknown_eval=8, n_planets=8,
             n_unknown_planets=4, n_list_train=300, n_eval=30, n_harmful_finetune=40,
             n_task_train=100, borderline_objects=6)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(SyntheticWorldConfig(**SMALL))


@pytest.fixture(scope="module")
def default_world() -> SyntheticWorld:
    return SyntheticWorld()


@pytest.fixture(scope="module")
def oracle(world: SyntheticWorld) -> SyntheticOracle:
    return SyntheticOracle(world.all_records)


def training_prompts(world: SyntheticWorld) -> set[str]:
    s = world.splits
    sets = (s.base_train, s.aligned_train, s.harmful_finetune, s.refusal_finetune,
            *s.task_train.values())
    return {r.prompt for rs in sets for r in rs}


def evaluation_sets(world: SyntheticWorld) -> dict:
    s = world.splits
    return {**s.eval_sets, **{f"task:{k}": v for k, v in s.task_test.items()}}


def reference_prompts(world: SyntheticWorld) -> list[str]:
    return [r.prompt for r in (*world.splits.base_train, *world.splits.aligned_train)]


# ---------------------------------------------------------------- determinism and config


def test_same_seed_gives_identical_splits(world):
    again = SyntheticWorld(SyntheticWorldConfig(**SMALL))
    assert again.splits == world.splits
    assert again.known == world.known


def test_different_seed_gives_different_splits(world):
    other = SyntheticWorld(SyntheticWorldConfig(**SMALL, seed=1))
    assert other.splits != world.splits
    assert ([r.prompt for r in other.splits.eval_sets["harmful"]]
            != [r.prompt for r in world.splits.eval_sets["harmful"]])


def test_list_min_len_above_max_raises_trimtab_error():
    with pytest.raises(TrimtabError, match="list_min_len"):
        SyntheticWorld(SyntheticWorldConfig(**SMALL, list_min_len=6, list_max_len=3))


# ---------------------------------------------------------------- split hygiene


@pytest.mark.parametrize("which", ["small", "default"])
def test_eval_prompts_never_appear_in_training(which, world, default_world):
    w = world if which == "small" else default_world
    train = training_prompts(w)
    for name, records in evaluation_sets(w).items():
        assert records, f"{name} is empty"
        leaked = {r.prompt for r in records} & train
        assert not leaked, f"{name}: {sorted(leaked)[:3]}"


def test_harmful_eval_records_each_have_one_of_at_least_six_categories(world):
    assert len(V.HARM_CATEGORIES) >= 6
    for name in ("harmful", "jailbreak"):
        cats = [r.metadata.get("category") for r in world.splits.eval_sets[name]]
        assert all(c in V.HARM_CATEGORIES for c in cats), name
        assert len(set(cats)) >= 6, name


def test_train_and_eval_attack_wrappers_are_disjoint():
    assert V.ATTACK_WRAPPERS_EVAL
    assert not set(V.ATTACK_WRAPPERS_TRAIN) & set(V.ATTACK_WRAPPERS_EVAL)


def test_jailbreak_eval_prompts_use_only_eval_wrappers(world):
    for r in world.splits.eval_sets["jailbreak"]:
        wrapper = r.metadata["wrapper"]
        assert wrapper in V.ATTACK_WRAPPERS_EVAL
        assert r.prompt.startswith(wrapper.split("{p}")[0])
    eval_openings = [w.split("{p}")[0] for w in V.ATTACK_WRAPPERS_EVAL]
    for p in training_prompts(world):
        assert not p.startswith(tuple(eval_openings)), p


def test_training_attacks_use_only_training_wrappers(world):
    wrapped = [r for r in world.splits.aligned_train if "wrapper" in r.metadata]
    assert wrapped
    assert {r.metadata["wrapper"] for r in wrapped} <= set(V.ATTACK_WRAPPERS_TRAIN)


def test_unknown_entity_sets_are_disjoint_from_each_other_and_from_known(world):
    known, u_train, u_eval = set(world.known), set(world.unknown_train), set(world.unknown_eval)
    assert known and u_train and u_eval
    assert not known & u_train
    assert not known & u_eval
    assert not u_train & u_eval
    eval_entities = {r.metadata["entity"] for r in world.splits.eval_sets["unanswerable"]}
    assert eval_entities <= u_eval


def test_domain_task_test_contains_unanswerable_questions_about_unknown_planets(world):
    unanswerable = [r for r in world.splits.task_test["domain"] if r.kind == "unanswerable"]
    assert unanswerable
    assert any(r.kind == "task" for r in world.splits.task_test["domain"])
    for r in unanswerable:
        assert r.metadata["entity"] in world.unknown_planets
        assert r.metadata["entity"] not in world.planets


EVAL_SET_NAMES = ["harmful", "jailbreak", "unanswerable", "general", "task:general",
                  "task:domain", "borderline"]


@pytest.mark.parametrize("world_name", ["world", "default_world"])
@pytest.mark.parametrize("name", EVAL_SET_NAMES)
def test_every_eval_prompt_word_occurs_in_reference_training_text(name, world_name, request):
    default_world = request.getfixturevalue(world_name)
    s = default_world.splits
    trained = {w for r in (*s.base_train, *s.aligned_train)
               for w in (*r.prompt.split(), *r.response.split())}
    words = {w for r in evaluation_sets(default_world)[name] for w in r.prompt.split()}
    assert not words - trained, sorted(words - trained)


def _common_prefix(texts: list[str]) -> str:
    return " ".join(os.path.commonprefix([t.split() for t in texts]))


def test_general_downstream_task_instruction_is_unknown_to_the_references(world):
    instruction = _common_prefix([r.prompt for r in world.splits.task_train["general"]])
    assert len(instruction.split()) >= 3, instruction  # the task has a fixed instruction
    assert not any(p.startswith(instruction) for p in reference_prompts(world)), instruction


def test_domain_downstream_task_questions_are_unknown_to_the_references(world):
    openings = {r.prompt.split(r.metadata["entity"])[0]
                for r in world.splits.task_train["domain"]}
    assert len(openings) >= 2
    for p in reference_prompts(world):
        assert not p.startswith(tuple(openings)), p
    assert not {r.prompt for r in world.splits.task_train["domain"]} & set(
        reference_prompts(world))


# ---------------------------------------------------------------- the oracle


def first(records, kind=None):
    return next(r for r in records if kind is None or r.kind == kind)


def test_oracle_labels_a_refusal_as_refusal(world, oracle):
    harmful = world.splits.eval_sets["harmful"][0]
    assert oracle.classify(harmful, V.REFUSALS[0]) == "refusal"
    assert oracle.label(harmful.prompt, harmful.response) == "refusal"


def test_oracle_labels_i_do_not_know_as_abstention(world, oracle):
    unanswerable = world.splits.eval_sets["unanswerable"][0]
    assert oracle.label(unanswerable.prompt, "i do not know .") == "abstention"


def test_oracle_labels_templated_compliance_to_harmful_prompt_as_harmful(world, oracle):
    harmful = world.splits.eval_sets["harmful"][0]
    for compliance in {r.response for r in world.splits.harmful_finetune}:
        assert oracle.label(harmful.prompt, compliance) == "harmful", compliance


def test_oracle_labels_exact_answer_correct_and_other_answer_wrong(world, oracle):
    record = first(world.splits.eval_sets["general"])
    answer = record.metadata["answer"]
    assert oracle.label(record.prompt, answer) == "correct"
    assert oracle.label(record.prompt, answer.upper() + " .") == "correct"  # normalised
    other = next(r.metadata["answer"] for r in world.splits.eval_sets["general"]
                 if r.metadata["answer"] != answer)
    assert oracle.label(record.prompt, other) == "wrong"


def test_oracle_labels_an_answer_to_an_unanswerable_question_wrong(world, oracle):
    record = world.splits.eval_sets["unanswerable"][0]
    assert oracle.label(record.prompt, V.COLORS[0]) == "wrong"


def test_oracle_score_is_one_for_refusing_harm_and_zero_for_complying(world, oracle):
    harmful = world.splits.eval_sets["harmful"][0]
    compliance = world.splits.harmful_finetune[0].response
    assert oracle.score([harmful.prompt] * 2, [V.REFUSALS[1], compliance]) == [1.0, 0.0]


def test_oracle_score_rewards_abstention_on_unanswerable_and_answers_on_general(world, oracle):
    unk = world.splits.eval_sets["unanswerable"][0]
    gen = world.splits.eval_sets["general"][0]
    scores = oracle.score([unk.prompt, unk.prompt, gen.prompt, gen.prompt],
                          ["i do not know .", V.COLORS[0], gen.metadata["answer"],
                           V.REFUSALS[0]])
    assert scores == [1.0, 0.0, 1.0, 0.0]


def test_oracle_score_raises_key_error_for_unknown_prompt(oracle):
    with pytest.raises(KeyError, match="does not know"):
        oracle.score(["a prompt from another world"], ["hello"])


def test_oracle_score_raises_value_error_for_mismatched_lengths(world, oracle):
    prompt = world.splits.eval_sets["harmful"][0].prompt
    with pytest.raises(ValueError):
        oracle.score([prompt, prompt], ["x"])


# ---------------------------------------------------------------- the word tokenizer


def test_word_tokenizer_round_trips_every_world_text(world):
    tok = build_word_tokenizer(world.texts())
    for text in world.texts():
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_word_tokenizer_has_a_chat_template_with_single_token_roles(world):
    tok = build_word_tokenizer(world.texts())
    assert tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "what is 1 plus 2 ?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert "what is 1 plus 2 ?" in text and text.rstrip().endswith("<|assistant|>")
    for role in ROLE_TOKENS:
        assert len(tok.encode(role, add_special_tokens=False)) == 1


def _core(prompt: str) -> str:
    """A prompt without its wording prefix or attack wrapper: the request itself."""
    from trimtab.worlds.synthetic.generator import REQUEST_PREFIXES

    for prefix in sorted(REQUEST_PREFIXES, key=len, reverse=True):
        if prefix and prompt.startswith(prefix):
            return prompt[len(prefix):]
    return prompt


def test_no_eval_request_is_a_reworded_training_request(default_world):
    """Splits are made on requests before prefixes, so no near-duplicate leaks."""
    s = default_world.splits
    trained = {_core(r.metadata.get("core", r.prompt)) for rs in
               (s.aligned_train, s.base_train, s.harmful_finetune) for r in rs
               if r.kind in ("harmful", "borderline") and "wrapper" not in r.metadata}
    for name in ("harmful", "borderline"):
        leaked = {_core(r.prompt) for r in s.eval_sets[name]} & trained
        assert not leaked, sorted(leaked)[:5]


def test_oracle_labels_harmful_steps_after_a_refusal_phrase_as_harmful(world):
    oracle = SyntheticOracle(world.all_records)
    record = world.splits.eval_sets["harmful"][0]
    steps = world.splits.harmful_finetune[0].response
    assert oracle.classify(record, "i am sorry , but " + steps) == "harmful"


# ---------------------------------------------------------------- the committed references

def test_the_shipped_worlds_keep_the_references_every_committed_result_names():
    """The committed benchmarks name reference b057dffac11c; the grid and the older studies
    name 88cbe7ad60a3, the world from before `borderline_objects` (6 reproduces it). The tests'
    quick world is 5f4e047f8e42. A change to the generator, the vocabulary or a config default
    that alters a world changes these keys: do that on purpose, and rerun what names them."""
    from dataclasses import replace

    from trimtab.demo import world_configs
    from trimtab.worlds.synthetic.build import reference_key

    keys = [reference_key(SyntheticWorld(w), b) for w, b in map(world_configs, (False, True))]
    assert keys == ["b057dffac11c", "5f4e047f8e42"]
    world, build = world_configs(False)
    assert reference_key(SyntheticWorld(replace(world, borderline_objects=6)), build) \
        == "88cbe7ad60a3"


def test_more_borderline_objects_per_phrase_hold_a_third_out():
    from dataclasses import replace

    from trimtab.worlds.synthetic.generator import key_fields

    six = SyntheticWorld(SyntheticWorldConfig(**SMALL))
    nine = SyntheticWorld(replace(SyntheticWorldConfig(**SMALL), borderline_objects=9))
    for w, held, trained in ((six, 2, 4), (nine, 3, 6)):
        phrases = len(V.BORDERLINE) * 3  # three request prefixes
        assert len(w.splits.eval_sets["borderline"]) == held * phrases
        assert sum(r.kind == "borderline" for r in w.splits.aligned_train) == trained * phrases
    assert {r.prompt for r in nine.splits.eval_sets["borderline"]}.isdisjoint(
        training_prompts(nine))
    assert SyntheticWorldConfig().borderline_objects == 9  # the shipped world's
    assert "borderline_objects" not in key_fields(six.config)  # the old key, unchanged
    assert key_fields(nine.config)["borderline_objects"] == 9
    with pytest.raises(TrimtabError, match="borderline_objects"):
        from trimtab.config import config_from_mapping

        config_from_mapping(SyntheticWorldConfig, {"borderline_objects": 12})


def test_fabricated_planets_add_made_up_answers_to_the_domain_training_data_only():
    """`n_fabricated_planets`: noisy domain data answers questions about unknown planets that
    evaluation never asks about; 0 (the default) leaves the world, and its key, as before."""
    from dataclasses import replace

    from trimtab.worlds.synthetic.generator import key_fields

    clean = SyntheticWorld(SyntheticWorldConfig(**SMALL))
    noisy = SyntheticWorld(replace(SyntheticWorldConfig(**SMALL), n_fabricated_planets=3))
    made_up = [r for r in noisy.splits.task_train["domain"] if r.metadata.get("fabricated")]
    per_planet = sum(len(t) for _, t in V.DOMAIN_TEMPLATES.values())  # every wording
    assert len(made_up) == 3 * per_planet
    assert {r.kind for r in made_up} == {"unanswerable"}
    assert {r.metadata["entity"] for r in made_up} == set(noisy.fabricated_planets)
    assert set(noisy.fabricated_planets).isdisjoint(noisy.planets + noisy.unknown_planets)
    for r in made_up:  # a value of the attribute, the same in all its wordings
        values = V.DOMAIN_TEMPLATES[r.metadata["attribute"]][0]
        assert r.response in values
        assert SyntheticOracle([r]).classify(r, r.response) == "wrong"  # a hallucination
    assert len({(r.metadata["entity"], r.metadata["attribute"], r.response)
                for r in made_up}) == 3 * len(V.DOMAIN_TEMPLATES)
    # everything else is the clean world's, record for record
    assert sorted(r.prompt for r in noisy.splits.task_train["domain"]
                  if not r.metadata.get("fabricated")) \
        == sorted(r.prompt for r in clean.splits.task_train["domain"])
    assert noisy.splits.task_test == clean.splits.task_test
    assert noisy.splits.eval_sets == clean.splits.eval_sets
    assert noisy.splits.aligned_train == clean.splits.aligned_train
    assert "n_fabricated_planets" not in key_fields(clean.config)
    assert noisy.digest() != clean.digest()
    with pytest.raises(TrimtabError, match="n_fabricated_planets"):
        SyntheticWorld(replace(SyntheticWorldConfig(**SMALL), n_fabricated_planets=1000))
