"""Alignment signals: judges that score (prompt, response) pairs in [0, 1] (1 = aligned).

`build_signal(spec, context)` is the one way methods obtain a signal. A spec is
`KIND[:ARG][,key=value,...]`:

- `keywords`: refusal phrases (the GCG list plus Arditi et al.'s, also `keywords:default`);
  `keywords:gcg` and `keywords:refusal-direction` use one published list alone;
  `prefixes=a|b|c` replaces it;
- `oracle`: the synthetic world's oracle (needs the world in the context);
- `classifier`: the learned response classifier, trained on the synthetic world's training
  records and cached; `classifier:PATH` loads a saved one;
- `hf:PATH`: a Hugging Face sequence-classification model (`aligned_label=`, `pair=`, ...);
- `guard:PATH`: a guard model answering safe/unsafe (`rubric=binary|scale`, `chat_format=`);
- `http:BASE_URL`: an OpenAI-compatible chat-completions judge (`model=`, `api_key_env=`,
  `rubric=`, `timeout=`, `max_retries=`, `total_timeout=`, `cache_dir=`, ...);
- `embedding:DIR`: the MiniLM prompt-risk and response classifiers saved in DIR
  (`benchmarks/real_judges.py`): answering a harmful request or refusing a benign one.

Options are the fields of each signal's config dataclass (`KeywordConfig`, `ClassifierConfig`,
`HFSignalConfig`, `GuardConfig`, `HTTPJudgeConfig`); list values are separated by `|`.
Example: `http:http://127.0.0.1:8000/v1,model=llama-guard,rubric=scale,timeout=10`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.signals.base import REASONS, UNSCORED, AlignmentSignal, Verdict, check_verdicts

__all__ = ["REASONS", "SIGNAL_KINDS", "UNSCORED", "AlignmentSignal", "Verdict", "build_signal",
           "check_verdicts", "parse_spec", "signal_files"]

SIGNAL_KINDS = ("keywords", "oracle", "classifier", "hf", "guard", "http", "embedding")
_SPEC_HELP = ("keywords, oracle, classifier, classifier:PATH, hf:PATH, guard:PATH, "
              "http:BASE_URL, embedding:DIR (options as ,key=value)")


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """`KIND[:ARG][,key=value...]` -> (kind, arg, options)."""
    if not isinstance(spec, str) or not spec.strip():
        raise TrimtabError(f"empty signal spec; use one of: {_SPEC_HELP}.")
    head, *parts = spec.strip().split(",")
    kind, sep, arg = head.partition(":")
    kind = kind.strip().lower()
    if kind in ("http", "https") and arg.startswith("//"):  # a bare URL: http://host
        arg = f"{kind}:{arg}"
        kind = "http"
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise TrimtabError(f"signal spec {spec!r}: expected key=value after a comma, got "
                               f"{part!r}.")
        options[key.strip().replace("-", "_")] = value.strip()
    if kind not in SIGNAL_KINDS:
        raise TrimtabError(f"unknown signal {kind!r} in spec {spec!r}; valid specs: "
                           f"{_SPEC_HELP}.")
    return kind, (arg.strip() or None) if sep else None, options


def _convert(text: str, tp: Any, name: str, spec: str) -> Any:
    args = typing.get_args(tp)
    if type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if tp in (int, float, str):
            return tp(text)
        if origin is list:
            (elem,) = typing.get_args(tp) or (str,)
            return [elem(v) for v in text.split("|") if v != ""]
    except ValueError:
        raise TrimtabError(f"signal spec {spec!r}: {name}={text!r} is not a valid "
                           f"{getattr(tp, '__name__', tp)}.") from None
    raise TrimtabError(f"signal spec {spec!r}: option {name} cannot be set in a spec.")


def _config(cls: type, options: dict[str, str], spec: str) -> Any:
    from trimtab.config import config_from_mapping

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    mapping = {}
    for key, text in options.items():
        if key not in names:
            raise TrimtabError(f"signal spec {spec!r}: unknown option {key!r}; options of this "
                               f"signal: {', '.join(names)}.")
        mapping[key] = _convert(text, hints[key], key, spec)
    return config_from_mapping(cls, mapping, source=f"signal spec {spec!r}")


# kinds whose ARG may be a local file or folder holding the judge's weights
_LOCAL_KINDS = ("classifier", "hf", "guard", "embedding")


def signal_files(*specs: str) -> list[str]:
    """The paths signal specs load their judges from (`classifier:PATH`, `hf:PATH`,
    `guard:PATH`, `embedding:DIR`): a checkpoint records their hashes (or that nothing is
    there, as for a hub name), so a judge rebuilt or put in place between a kill and a resume
    is not trained on unnoticed. URLs and judges built from the world or from the spec itself
    give none."""
    parsed = [parse_spec(spec) for spec in specs]
    return [arg for kind, arg, _ in parsed if kind in _LOCAL_KINDS and arg]


def build_signal(spec: str, context: Any | None = None) -> AlignmentSignal:
    """The signal named by `spec` (see the module docstring); `context` is a `TrainingContext`
    (or None), which the `oracle` and world-trained `classifier` specs need."""
    kind, arg, options = parse_spec(spec)
    world = getattr(context, "world", None)
    if kind == "keywords":
        from trimtab.signals.keywords import PRESETS, KeywordConfig, KeywordSignal

        config = _config(KeywordConfig, options, spec)
        if arg:
            arg = arg.strip().lower()
            if arg not in PRESETS:
                raise TrimtabError(f"unknown keyword list {arg!r} in {spec!r}; use one of "
                                   f"{', '.join(PRESETS)} (or prefixes=a|b|c).")
            if "prefixes" in options:
                raise TrimtabError(f"{spec!r} names a keyword list and prefixes=; give one.")
            config = dataclasses.replace(config, prefixes=list(PRESETS[arg]))
        return KeywordSignal(config)
    if kind == "oracle":
        if world is None:
            raise TrimtabError("the `oracle` signal needs the synthetic world (train on the "
                               "synthetic world, or choose another signal such as "
                               "classifier:PATH or http:URL).")
        from trimtab.signals.oracle import OracleSignal

        return OracleSignal(world)
    if kind == "classifier":
        from trimtab.signals.classifier import (
            ClassifierConfig,
            ResponseClassifier,
            world_classifier,
        )

        if arg is not None:
            if options:
                raise TrimtabError(f"signal spec {spec!r}: a saved classifier takes no "
                                   "options; they were fixed when it was trained.")
            return ResponseClassifier.load(arg)
        if world is None:
            raise TrimtabError(
                "the `classifier` signal trains on the synthetic world, and there is none "
                "here; pass a saved one as classifier:PATH (see "
                "trimtab.signals.classifier.ResponseClassifier.fit/save) or use another "
                "signal (hf:PATH, guard:PATH, http:URL, keywords)."
            )
        return world_classifier(world, getattr(context, "artifacts_dir", None),
                                _config(ClassifierConfig, options, spec))
    if arg is None:
        what = "BASE_URL" if kind == "http" else "PATH"
        raise TrimtabError(f"the `{kind}` signal needs a {what}: write {kind}:{what}.")
    if kind == "embedding":
        from trimtab.signals.embedding import EmbeddingSignal

        if options:
            raise TrimtabError(f"signal spec {spec!r}: `embedding:DIR` takes no options; its "
                               "classifiers were fixed when they were trained.")
        return EmbeddingSignal(arg)
    if kind == "hf":
        from trimtab.signals.hf import HFClassifierSignal, HFSignalConfig

        return HFClassifierSignal(arg, _config(HFSignalConfig, options, spec))
    if kind == "guard":
        from trimtab.signals.guard import GuardConfig, GuardSignal

        return GuardSignal(arg, _config(GuardConfig, options, spec))
    from trimtab.signals.http import HTTPJudgeConfig, HTTPJudgeSignal

    if "base_url" in options:
        raise TrimtabError(f"signal spec {spec!r}: give the URL after `http:`, not base_url=.")
    return HTTPJudgeSignal(_config(HTTPJudgeConfig, {**options, "base_url": arg}, spec))
