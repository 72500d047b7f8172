"""Generates the synthetic instruction world from a seed.

Every prompt is generated once and assigned to exactly one split, so evaluation prompts never
appear in any training set (the constructor checks it). The world has general tasks the
reference model learns, harmful requests in eight categories, borderline benign requests,
unanswerable questions about unknown entities, attack wrappers (training and evaluation sets
disjoint) and two downstream tasks the reference has never seen: a general skill (`review`:
the sentiment of a short review) and a domain knowledge base of planets with its own
unanswerable questions. Optionally (`n_fabricated_planets`) the domain's training data also
answers questions about other unknown planets with made-up values, as noisy data does.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from functools import cached_property

from trimtab.config import SEED_MAX, CheckedConfig, option
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.worlds.synthetic import vocabulary as V

TASKS = ("general", "domain")
REQUEST_PREFIXES = ("", "please tell me , ", "i need to know : ")


@dataclass
class SyntheticWorldConfig(CheckedConfig):
    """What the world contains. Changing any field changes the cache key of the references."""

    seed: int = option(0, "seed of the generator; the same seed gives the same world", min=0,
                       max=SEED_MAX)
    n_known_entities: int = option(48, "entities with facts the reference model knows", min=4)
    n_unknown_train: int = option(120, "unknown entities used to teach abstention", min=2)
    n_unknown_eval: int = option(24, "unknown entities held out for the hallucination metric",
                                 min=2)
    n_planets: int = option(32, "planets in the domain knowledge base (downstream task)", min=4)
    n_unknown_planets: int = option(16, "planets nobody knows: the domain's unanswerable questions",
                                    min=2)
    n_list_train: int = option(1800, "list-operation examples in the reference training data",
                               min=10)
    list_min_len: int = option(3, "shortest word list in list tasks", min=2)
    list_max_len: int = option(5, "longest word list in list tasks", min=2)
    n_eval: int = option(120, "evaluation prompts per metric (harmful, unanswerable, general...)",
                         min=10)
    n_harmful_finetune: int = option(150, "harmful prompts reserved to contaminate fine-tuning",
                                     min=10)
    n_task_train: int = option(1200, "training examples of the general downstream task (reviews)",
                               min=10)
    fact_repeats: int = option(5, "copies of each fact question in the reference training data",
                               min=1)
    arith_repeats: int = option(3, "copies of each sum in the reference training data", min=1)
    # Added later: at 6 (the default until the 9-object switch) it reproduces the older world
    # and its cache key exactly (see `KEY_FIELDS_SINCE`), so the results that name that
    # reference can still be regenerated with `borderline_objects: 6`.
    borderline_objects: int = option(9, "harmless objects per alarming borderline phrase (of 9 "
                                        "in the vocabulary); a third are held out for "
                                        "evaluation (6 reproduces the world before the "
                                        "switch)", min=3, max=9)
    # Added later; 0 reproduces the world before it (see `KEY_FIELDS_SINCE`).
    n_fabricated_planets: int = option(0, "unknown planets whose questions the domain's "
                                          "training data answers with made-up values, as "
                                          "noisy scraped data does: data that teaches "
                                          "hallucination (0: clean domain data)", min=0)


# Fields added to SyntheticWorldConfig later, with the value that reproduces the world from
# before them: left out of the references' cache key at that value, so existing caches and
# the results that name them stay valid.
KEY_FIELDS_SINCE = {"borderline_objects": 6, "n_fabricated_planets": 0}


def key_fields(config: SyntheticWorldConfig) -> dict:
    """The config as the references' cache key sees it (see `KEY_FIELDS_SINCE`)."""
    fields = asdict(config)
    return {k: v for k, v in fields.items()
            if not (k in KEY_FIELDS_SINCE and v == KEY_FIELDS_SINCE[k])}


@dataclass
class WorldSplits:
    """All record sets of one world, by use."""

    base_train: list[Record]
    aligned_train: list[Record]
    harmful_finetune: list[Record]  # (harmful prompt, harmful compliance): contamination pool
    refusal_finetune: list[Record]  # the same prompts with refusals: for safety-data mixing
    task_train: dict[str, list[Record]]
    task_test: dict[str, list[Record]]  # answerable and (domain) unanswerable questions
    eval_sets: dict[str, list[Record]]  # harmful, jailbreak, unanswerable, borderline, general


def _names(first: list[str], second: list[str]) -> list[str]:
    return [a + b for a in first for b in second]


class SyntheticWorld:
    """A generated world; `splits` holds every record set (`SyntheticOracle` grades responses)."""

    def __init__(self, config: SyntheticWorldConfig | None = None) -> None:
        self.config = config or SyntheticWorldConfig()
        c = self.config
        if c.list_min_len > c.list_max_len:
            raise TrimtabError(
                f"list_min_len ({c.list_min_len}) is larger than list_max_len "
                f"({c.list_max_len}); set list_min_len <= list_max_len."
            )
        self.rng = random.Random(c.seed)
        people = _names(V.SYLLABLES_A, V.SYLLABLES_B)
        planets = _names(V.SYLLABLES_B, V.SYLLABLES_A)
        self.rng.shuffle(people)
        self.rng.shuffle(planets)
        need = c.n_known_entities + c.n_unknown_train + c.n_unknown_eval
        n_p = c.n_planets + c.n_unknown_planets
        if need > len(people) or n_p + c.n_fabricated_planets > len(planets):
            raise TrimtabError(
                f"the world has {len(people)} entity and {len(planets)} planet names but the "
                "config asks for more; lower n_known_entities/n_unknown_* or n_planets/"
                "n_unknown_planets/n_fabricated_planets."
            )
        self.known = people[: c.n_known_entities]
        self.unknown_train = people[c.n_known_entities : c.n_known_entities + c.n_unknown_train]
        self.unknown_eval = people[c.n_known_entities + c.n_unknown_train : need]
        self.planets = planets[: c.n_planets]
        self.unknown_planets = planets[c.n_planets : n_p]
        self.fabricated_planets = planets[n_p : n_p + c.n_fabricated_planets]
        self.facts = {
            (e, attr): self.rng.choice(values)
            for e in self.known
            for attr, (values, _) in V.FACT_TEMPLATES.items()
        }
        self.domain_facts = {
            (p, attr): self.rng.choice(values)
            for p in self.planets
            for attr, (values, _) in V.DOMAIN_TEMPLATES.items()
        }
        # Words every list task may draw from: nouns, unknown names, planets, and words that only
        # evaluation text would otherwise contain, so no evaluation word is untrained.
        extra = set()
        borderline_text = [w for tmpl, objects, answer in V.BORDERLINE
                           for w in (tmpl, answer, *objects[:c.borderline_objects])]
        harm_objects = [o for spec in V.HARM_CATEGORIES.values() for o in spec["objects"]]
        for text in (*V.ATTACK_WRAPPERS_EVAL, *harm_objects, V.REVIEW_TEMPLATE, V.REVIEW_TEXT,
                     *V.POSITIVE,
                     *V.NEGATIVE, *V.REVIEW_CONNECTORS, *borderline_text,
                     *(t for _, ts in V.DOMAIN_TEMPLATES.values() for t in ts)):
            extra.update(w for w in text.split() if "{" not in w)
        # Known entities are left out: like famous names, they occur as the subjects of facts,
        # while unknown names occur only in other text, so "do I know this name?" is a
        # property the model can learn rather than a list of names to memorise.
        others = set(people) - set(self.known)
        self.list_words = sorted(set(V.NOUNS) | others | set(planets) | extra)
        self.splits = self._generate()
        self._check_disjoint()

    # ------------------------------------------------------------------ generation helpers
    def _word_list(self) -> list[str]:
        n = self.rng.randint(self.config.list_min_len, self.config.list_max_len)
        return self.rng.sample(self.list_words, n)

    def _list_record(self, op: str, words: list[str] | None = None) -> Record:
        words = words or self._word_list()
        answer = words[0] if op == "first" else words[-1]
        prompt = V.LIST_TEMPLATES[op].format(words=" ".join(words))
        return Record(prompt, answer, "general", {"answer": answer, "task": op})

    def _review_record(self) -> Record:
        adjective1, adjective2 = self.rng.sample(V.POSITIVE + V.NEGATIVE, 2)
        noun1, noun2 = self.rng.sample(V.NOUNS, 2)
        agree = (adjective1 in V.POSITIVE) == (adjective2 in V.POSITIVE)
        text = V.REVIEW_TEXT.format(noun1=noun1, adjective1=adjective1, noun2=noun2,
                                    adjective2=adjective2,
                                    connector=V.REVIEW_CONNECTORS[0 if agree else 1])
        answer = "good" if adjective2 in V.POSITIVE else "bad"
        return Record(V.REVIEW_TEMPLATE.format(text=text), answer, "task",
                      {"answer": answer, "task": "review"})

    def _unique(self, make, n: int, seen: set[str]) -> list[Record]:
        """`n` records from `make` whose prompts are not in `seen` (which is updated)."""
        out: list[Record] = []
        for _ in range(100 * n + 1000):
            if len(out) >= n:
                break
            rec = make()
            if rec.prompt not in seen:
                seen.add(rec.prompt)
                out.append(rec)
        if len(out) < n:
            raise TrimtabError(
                f"could not generate {n} distinct prompts of this kind; lower n_eval, "
                "n_list_train or n_task_train, or raise list_max_len."
            )
        return out

    def _compliance(self, category: str) -> str:
        cat = V.HARM_CATEGORIES[category]
        steps = self.rng.sample(cat["steps"], 3)
        items = self.rng.sample(cat["items"], 2)
        template = self.rng.choice(V.COMPLIANCE_TEMPLATES)
        return template.format(s1=steps[0], s2=steps[1], s3=steps[2], i1=items[0], i2=items[1])

    def _split_by_core(self, cores: list, n_eval: int, n_second: int = 0) -> tuple:
        """Shuffle `cores` and cut them into eval, second and rest parts, by core.

        A core is a request before its wording prefix is added; splitting cores rather than
        prompts keeps near-duplicates ("please tell me , X" and "X") on one side only.
        Each part is expanded into every prefix variant.
        """
        cores = list(cores)
        self.rng.shuffle(cores)
        k = len(REQUEST_PREFIXES)
        n_e, n_s = -(-n_eval // k), -(-n_second // k)  # ceil: cores needed for n prompts
        if n_e + n_s + 10 > len(cores):
            raise TrimtabError(
                f"the world has {len(cores)} distinct requests of this kind, too few for "
                f"{n_eval} evaluation and {n_second} more prompts; lower n_eval or "
                "n_harmful_finetune."
            )

        def expand(part: list) -> list:
            return [(prefix, *core) for core in part for prefix in REQUEST_PREFIXES]

        return (expand(cores[:n_e]), expand(cores[n_e : n_e + n_s]),
                expand(cores[n_e + n_s :]))

    def _fact_questions(self, entities: list[str], templates: dict, facts: dict | None,
                        kind_answerable: str) -> tuple[list[Record], list[Record]]:
        """Questions about `entities`: for each (entity, attribute) one template is held out.

        Returns (train, held_out). With `facts` None the entities are unknown and the
        expected answer is an abstention.
        """
        train, held = [], []
        for e in entities:
            for attr, (_, tmpls) in templates.items():
                held_idx = self.rng.randrange(len(tmpls))
                for i, t in enumerate(tmpls):
                    prompt = t.format(e=e)
                    if facts is None:
                        rec = Record(prompt, self.rng.choice(V.ABSTENTIONS), "unanswerable",
                                     {"entity": e, "attribute": attr})
                    else:
                        ans = facts[(e, attr)]
                        rec = Record(prompt, ans, kind_answerable,
                                     {"answer": ans, "task": "fact", "entity": e,
                                      "attribute": attr})
                    (held if i == held_idx else train).append(rec)
        return train, held

    def _fabricated_questions(self, planets: list[str]) -> list[Record]:
        """Every domain question about `planets`, answered with a made-up value.

        Unanswerable questions with confident answers, one value per (planet, attribute) in
        all its wordings, as a wrong source repeats itself: fine-tuning on them teaches the
        model to answer what it cannot know. The record's kind stays `unanswerable` (the
        aligned answer abstains) and `fabricated` marks the response as made up.
        """
        out = []
        for p in planets:
            for attr, (values, tmpls) in V.DOMAIN_TEMPLATES.items():
                made_up = self.rng.choice(values)
                out += [Record(t.format(e=p), made_up, "unanswerable",
                               {"entity": p, "attribute": attr, "fabricated": True})
                        for t in tmpls]
        return out

    # ------------------------------------------------------------------ the splits
    def _generate(self) -> WorldSplits:
        c, rng = self.config, self.rng
        # General tasks: facts, arithmetic, list operations.
        fact_train, fact_eval = self._fact_questions(self.known, V.FACT_TEMPLATES, self.facts,
                                                     "general")
        arith_train, arith_eval = [], []
        for a in range(10):
            for b in range(10):
                held = rng.randrange(len(V.ARITH_TEMPLATES))
                for i, t in enumerate(V.ARITH_TEMPLATES):
                    ans = str(a + b)
                    rec = Record(t.format(a=a, b=b), ans, "general",
                                 {"answer": ans, "task": "arithmetic"})
                    (arith_eval if i == held else arith_train).append(rec)
        def a_list() -> Record:
            return self._list_record(rng.choice(list(V.LIST_TEMPLATES)))

        # The first list examples go through every list word once, so every word the
        # evaluation can contain is trained, however small the world.
        shuffled = rng.sample(self.list_words, len(self.list_words))
        k = c.list_max_len
        seen: set[str] = set()
        list_train = [self._list_record(rng.choice(list(V.LIST_TEMPLATES)), shuffled[i : i + k])
                      for i in range(0, len(shuffled) - k + 1, k)]
        seen.update(r.prompt for r in list_train)
        list_train += self._unique(a_list, max(0, c.n_list_train - len(list_train)), seen)
        list_eval = self._unique(a_list, c.n_eval, seen)
        # Facts and sums are memorised, lists are computed: repeat the former so both are
        # learned within the same short build.
        general_train = fact_train * c.fact_repeats + arith_train * c.arith_repeats + list_train
        n_third = c.n_eval // 3
        general_eval = (rng.sample(fact_eval, min(n_third, len(fact_eval)))
                        + rng.sample(arith_eval, min(n_third, len(arith_eval)))
                        + list_eval[: c.n_eval - 2 * n_third])

        # Harmful requests: one pool of (category, request, object) cores split three ways.
        cores = [(cat, req.format(o=obj)) for cat, spec in V.HARM_CATEGORIES.items()
                 for req in spec["requests"] for obj in spec["objects"]]
        h_eval, h_ft, h_align = (
            [(prefix + req, cat) for prefix, cat, req in part]
            for part in self._split_by_core(cores, c.n_eval, c.n_harmful_finetune)
        )

        def harm(prompt: str, cat: str, response: str, wrapper: str | None = None) -> Record:
            meta = {"category": cat}
            if wrapper is not None:
                meta["wrapper"] = wrapper
                prompt = wrapper.format(p=prompt)
            return Record(prompt, response, "harmful", meta)

        base_harm, aligned_harm = [], []
        for p, cat in h_align:
            wrapper = rng.choice(V.ATTACK_WRAPPERS_TRAIN)
            base_harm += [harm(p, cat, self._compliance(cat)),
                          harm(p, cat, self._compliance(cat), wrapper)]
            aligned_harm += [harm(p, cat, rng.choice(V.REFUSALS)),
                             harm(p, cat, rng.choice(V.REFUSALS), wrapper)]
        harmful_finetune = [harm(p, cat, self._compliance(cat)) for p, cat in h_ft]
        refusal_finetune = [harm(p, cat, rng.choice(V.REFUSALS)) for p, cat in h_ft]
        harmful_eval = [harm(p, cat, rng.choice(V.REFUSALS)) for p, cat in h_eval]
        jailbreak_eval = [harm(p, cat, rng.choice(V.REFUSALS), rng.choice(V.ATTACK_WRAPPERS_EVAL))
                          for p, cat in h_eval]

        # Borderline benign requests with alarming words, split by (template, object) within
        # each template: a third of its objects are held out for evaluation, so every
        # alarming phrase is trained with harmless objects and evaluation asks whether that
        # generalises to new ones. (A split over all pairs could leave a phrase with half its
        # objects, or none, in training, and the over-refusal rate then measured the luck of
        # the split.)
        b_eval, b_train = [], []
        for tmpl, objects, answer in V.BORDERLINE:
            cores = [(tmpl.format(o=o), answer.format(o=o))
                     for o in objects[:c.borderline_objects]]
            rng.shuffle(cores)
            held = max(1, len(cores) // 3)
            b_eval += [(prefix, *core) for core in cores[:held] for prefix in REQUEST_PREFIXES]
            b_train += [(prefix, *core) for core in cores[held:] for prefix in REQUEST_PREFIXES]

        def borderline(part: list) -> list[Record]:
            return [Record(prefix + prompt, answer, "borderline", {"answer": answer})
                    for prefix, prompt, answer in part]

        borderline_eval, borderline_train = borderline(b_eval), borderline(b_train)

        # Unanswerable questions: unknown entities (train and eval entities disjoint).
        unk_train_a, unk_train_b = self._fact_questions(self.unknown_train, V.FACT_TEMPLATES,
                                                        None, "general")
        # Ordinary nouns are unknown entities too: more variety makes abstention a rule.
        noun_a, noun_b = self._fact_questions(V.NOUNS, V.FACT_TEMPLATES, None, "general")
        unk_train = unk_train_a + unk_train_b + noun_a + noun_b
        unk_eval_a, unk_eval_b = self._fact_questions(self.unknown_eval, V.FACT_TEMPLATES, None,
                                                      "general")
        unk_eval = rng.sample(unk_eval_a + unk_eval_b, min(c.n_eval, len(unk_eval_a + unk_eval_b)))
        # The base never sees an unanswerable question: it answers every fact question with
        # some value (it hallucinates) and the unknown names stay as unfamiliar as the
        # evaluation ones, so abstention learned in stage 2 is a rule, not a list of names.
        base_train = general_train + base_harm + borderline_train
        aligned_train = general_train + aligned_harm + borderline_train + unk_train
        rng.shuffle(base_train)
        rng.shuffle(aligned_train)

        # Downstream tasks the reference has never seen.
        seen_reviews: set[str] = set()
        review_train = self._unique(self._review_record, c.n_task_train, seen_reviews)
        review_test = self._unique(self._review_record, c.n_eval, seen_reviews)
        dom_train, dom_test = self._fact_questions(self.planets, V.DOMAIN_TEMPLATES,
                                                   self.domain_facts, "task")
        dom_unk_a, dom_unk_b = self._fact_questions(self.unknown_planets, V.DOMAIN_TEMPLATES,
                                                    None, "task")
        dom_unanswerable = rng.sample(dom_unk_a + dom_unk_b,
                                      min(len(dom_test), len(dom_unk_a + dom_unk_b)))
        dom_train += self._fabricated_questions(self.fabricated_planets)  # none by default
        rng.shuffle(dom_train)

        return WorldSplits(
            base_train=base_train,
            aligned_train=aligned_train,
            harmful_finetune=harmful_finetune,
            refusal_finetune=refusal_finetune,
            task_train={"general": review_train, "domain": dom_train},
            task_test={"general": review_test, "domain": dom_test + dom_unanswerable},
            eval_sets={
                "harmful": harmful_eval,
                "jailbreak": jailbreak_eval,
                "unanswerable": unk_eval,
                "borderline": borderline_eval,
                "general": general_eval,
            },
        )

    def _check_disjoint(self) -> None:
        s = self.splits
        train = {r.prompt for rs in (s.base_train, s.aligned_train, s.harmful_finetune,
                                     *s.task_train.values()) for r in rs}
        for name, rs in [*s.eval_sets.items(), *(("task:" + k, v) for k, v in
                                                 s.task_test.items())]:
            leaked = {r.prompt for r in rs} & train
            if leaked:  # a generator bug, not a user error
                raise AssertionError(f"{len(leaked)} {name} eval prompts leak into training")

    # ------------------------------------------------------------------ views
    @cached_property
    def all_records(self) -> list[Record]:
        s = self.splits
        out = [*s.base_train, *s.aligned_train, *s.harmful_finetune, *s.refusal_finetune]
        for rs in (*s.task_train.values(), *s.task_test.values(), *s.eval_sets.values()):
            out.extend(rs)
        return out

    def digest(self) -> str:
        """A hash of every record of the world, in order: it changes when the data does."""
        h = hashlib.sha256()
        for r in self.all_records:
            h.update(json.dumps(r.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def texts(self) -> list[str]:
        """Every prompt and response of the world: the tokenizer's corpus."""
        return [t for r in self.all_records for t in (r.prompt, r.response)]

    def task_records(self, task: str, split: str = "train") -> list[Record]:
        if task not in TASKS:
            raise TrimtabError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
        return (self.splits.task_train if split == "train" else self.splits.task_test)[task]
