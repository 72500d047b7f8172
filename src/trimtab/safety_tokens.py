"""Safety tokens for `pact`: which vocabulary entries carry a model's refusals, and how much.

Selection (DESIGN.md, "pact"): teacher-force the aligned model and its unaligned base on
(harmful prompt, refusal) pairs, average the next-token probabilities over the first N response
positions, keep the top-k tokens by the aligned model's mean probability, and weight them by
the gap p_aligned - p_base on those k (special tokens such as the end-of-turn token are never
candidates: they end every response, task answers included). The gap is z-scored over the k
tokens, clamped at 0 and then L2-normalised (in that order: normalising last is what makes
||v|| = 1; z-scoring after it would undo it, and clamping after it would break it). Tokens
whose gap is below the set's mean stay in the set with weight 0, so `pact` pushes them down
within the set. Without a base model the weights come from the aligned probabilities
alone (z-scored, clamped, normalised), and the file says so.

The set is saved as one file, JSON or (by its suffix) safetensors: ids, strings (each token
decoded as text, and its raw tokenizer piece such as "Ġcan"), weights, k, N, the tokenizer's
vocabulary hash and size and the model paths, so a file from another tokenizer is refused when
loaded. In a safetensors file the ids, weights and probabilities are tensors and the rest is
JSON in its header.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trimtab.config import CheckedConfig, option
from trimtab.data.collator import CausalCollator
from trimtab.data.formatting import ChatFormatter
from trimtab.data.records import Record
from trimtab.errors import TrimtabError

FILE_FORMAT = "trimtab-safety-tokens"
FILE_VERSION = 1
SUFFIXES = (".json", ".safetensors")
_TENSOR_FIELDS = {"token_ids": torch.long, "weights": torch.float64,
                  "aligned_prob": torch.float64, "base_prob": torch.float64}
SELECTION_VERSION = 2  # bump when the selection changes in a way the config does not capture


@dataclass
class SafetyTokenConfig(CheckedConfig):
    """How the safety tokens are selected (shared by `trimtab safety-tokens` and `pact`)."""

    k: int = option(0, "safety tokens to keep; 0 = auto: 50 per 50k vocabulary entries, at "
                       "least 16 (what the synthetic world's ~800 words get)", min=0)
    n_positions: int = option(8, "first response positions whose next-token probabilities are "
                                 "averaged to select the tokens", min=1)
    batch_size: int = option(32, "pairs per forward pass while selecting", min=1)
    max_length: int = option(512, "longest (prompt, refusal) pair in tokens; longer ones are "
                                  "cut (only the first response positions matter)", min=8)


SELECTION = SafetyTokenConfig()
# The auto rule for k: DESIGN.md's 50 for 50k vocabularies is 0.1% of the vocabulary; for a
# small vocabulary that would leave one token, so k never goes below a floor: the synthetic
# world's refusals use 16 distinct words in their first 8 positions, and with k = 16 the set is
# exactly those words (a larger k adds unrelated words, names, that then get pinned at weight 0).
AUTO_K_PER_ENTRY = 50 / 50_000
AUTO_K_FLOOR = 16


def auto_k(vocab_size: int) -> int:
    return min(vocab_size, max(AUTO_K_FLOOR, round(vocab_size * AUTO_K_PER_ENTRY)))


def vocab_hash(tokenizer: Any) -> str:
    """A hash of the tokenizer's (token, id) pairs: equal hashes mean the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


@dataclass
class SafetyTokens:
    """A selected token set; `weights` (v) has unit L2 norm and no negative entry."""

    token_ids: list[int]
    tokens: list[str]  # each token decoded as text
    weights: list[float]
    k: int
    n_positions: int
    vocab_size: int
    vocab_hash: str
    aligned: str
    base: str | None
    weights_from: str  # "gap" (aligned - base) or "aligned-only" (no base model given)
    aligned_prob: list[float] = field(default_factory=list)
    base_prob: list[float] | None = None
    n_pairs: int = 0
    source: str = ""
    pieces: list[str] = field(default_factory=list)  # the tokenizer's raw pieces ("Ġcan")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FILE_FORMAT, "version": FILE_VERSION, **self.__dict__}

    def save(self, path: str | Path) -> Path:
        """Write the set as JSON, or as safetensors when `path` ends in .safetensors."""
        from trimtab.evaluation.results import write_bytes_atomic, write_json_atomic

        path = check_suffix(path)
        if path.suffix != ".safetensors":
            return write_json_atomic(path, self.to_dict())
        from safetensors.torch import save

        data = self.to_dict()
        tensors = {name: torch.tensor(data.pop(name), dtype=dtype)
                   for name, dtype in _TENSOR_FIELDS.items() if data.get(name) is not None}
        return write_bytes_atomic(path, save(tensors, metadata={"format": FILE_FORMAT,
                                                                "meta": json.dumps(data)}))

    @classmethod
    def load(cls, path: str | Path) -> SafetyTokens:
        path = Path(path)
        try:
            data = (_read_safetensors(path) if path.suffix == ".safetensors"
                    else json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise TrimtabError(f"safety-token file {path} not found; build one with `trimtab "
                               "safety-tokens --aligned MODEL ... --out FILE`.") from None
        except TrimtabError:
            raise
        except Exception as err:  # a damaged file: JSON and safetensors raise several types
            raise TrimtabError(f"cannot read safety-token file {path}: {err}. Rebuild it with "
                               "`trimtab safety-tokens`.") from None
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise TrimtabError(f"{path} is not a trimtab safety-token file (no format "
                               f"{FILE_FORMAT!r}); build one with `trimtab safety-tokens`.")
        names = set(cls.__dataclass_fields__)
        try:
            tokens = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as err:
            raise TrimtabError(f"safety-token file {path} misses a field ({err}); rebuild it "
                               "with `trimtab safety-tokens`.") from None
        tokens.check_values(str(path))
        return tokens

    def check_values(self, where: str = "the safety-token set") -> None:
        def listed(name: str, ok: Any, what: str) -> None:
            values = getattr(self, name)
            if not isinstance(values, list) or not all(ok(v) for v in values):
                raise TrimtabError(f"{where}: {name} must be a list of {what}, got "
                                   f"{str(values)[:60]}; rebuild it with `trimtab safety-tokens`.")

        # a hand-edited file: "12" or 12.5 as an id, null as a weight
        listed("token_ids", lambda v: isinstance(v, int) and not isinstance(v, bool),
               "whole numbers")
        listed("tokens", lambda v: isinstance(v, str), "strings")
        listed("pieces", lambda v: isinstance(v, str), "strings")
        listed("weights", lambda v: isinstance(v, int | float) and not isinstance(v, bool),
               "numbers")
        for name in ("k", "n_positions", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TrimtabError(f"{where}: {name} must be a whole number, got {value!r}; "
                                   "rebuild it with `trimtab safety-tokens`.")
        n = len(self.token_ids)
        if n == 0:
            raise TrimtabError(f"{where} is empty: no safety token to constrain. Rebuild it "
                               "with a larger k, or with refusals the aligned model assigns "
                               "high probability.")
        if len(self.tokens) != n or len(self.weights) != n or len(self.pieces) not in (0, n):
            raise TrimtabError(f"{where} has {n} ids but {len(self.tokens)} strings, "
                               f"{len(self.weights)} weights and {len(self.pieces)} pieces "
                               "(each list needs one per id; pieces may be empty); rebuild it.")
        if len(set(self.token_ids)) != n:
            raise TrimtabError(f"{where} lists a token id twice; rebuild it.")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or not any(self.weights):
            raise TrimtabError(f"{where} needs finite, non-negative weights with at least one "
                               "above 0 (all zero would make the constraint empty); rebuild it.")

    def check_tokenizer(self, tokenizer: Any, where: str = "the safety-token file") -> None:
        """Refuse a set built with another tokenizer: its ids would name other tokens."""
        size = len(tokenizer)
        bad = [i for i in self.token_ids if not 0 <= i < size]
        if bad:
            raise TrimtabError(f"{where} has token ids {bad[:5]} outside this tokenizer's "
                               f"vocabulary of {size}: it was built for another tokenizer. "
                               "Rebuild it with `trimtab safety-tokens` for this model.")
        if self.vocab_hash != vocab_hash(tokenizer) or self.vocab_size != size:
            raise TrimtabError(f"{where} was built for another tokenizer (vocabulary hash "
                               f"{self.vocab_hash}, size {self.vocab_size}; this one has "
                               f"{vocab_hash(tokenizer)}, size {size}). Rebuild it with "
                               "`trimtab safety-tokens` for this model.")

    def describe(self, top: int = 20) -> str:
        """The heaviest tokens as strings with their weights, for the CLI and logs."""
        note = ("weights from the aligned-vs-base probability gap" if self.weights_from == "gap"
                else "NO base model: weights from the aligned model's probabilities alone")
        order = sorted(range(len(self.weights)), key=lambda i: -self.weights[i])
        lines = [f"{len(self.token_ids)} safety tokens (k={self.k}, first {self.n_positions} "
                 f"response positions, {self.n_pairs} pairs; {note})",
                 f"{'token':>16}  {'id':>6}  {'weight':>7}  {'p_aligned':>9}  {'p_base':>9}"]
        for i in order[:top]:
            pb = "-" if self.base_prob is None else f"{self.base_prob[i]:.4f}"
            pa = f"{self.aligned_prob[i]:.4f}" if self.aligned_prob else "-"
            lines.append(f"{self.tokens[i]!r:>16}  {self.token_ids[i]:>6}  "
                         f"{self.weights[i]:>7.3f}  {pa:>9}  {pb:>9}")
        zero = sum(1 for w in self.weights if w == 0)
        if zero:
            lines.append(f"({zero} of the {len(self.weights)} tokens have weight 0: pact pushes "
                         "them down within the set)")
        return "\n".join(lines)


def check_suffix(path: str | Path) -> Path:
    """A safety-token file is .json or .safetensors; any other name is refused, not written as
    JSON under a name that promises something else."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise TrimtabError(f"safety-token file {path}: the name must end in .json or "
                           ".safetensors (the format is chosen by it), e.g. tokens.json.")
    return path


def _read_safetensors(path: Path) -> dict[str, Any]:
    """A safety-token file written as safetensors, as the dict its JSON form holds."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        if header.get("format") != FILE_FORMAT:
            raise TrimtabError(f"{path} is a safetensors file but not a trimtab safety-token "
                               "file; build one with `trimtab safety-tokens`.")
        data = json.loads(header["meta"])
        for name in f.keys():  # noqa: SIM118 - not a dict
            if name in _TENSOR_FIELDS:
                data[name] = f.get_tensor(name).tolist()
    return {"format": FILE_FORMAT, **data}


def safety_weights(p_aligned: torch.Tensor, p_base: torch.Tensor | None) -> torch.Tensor:
    """v = L2-normalise(clamp(z-score(gap), min=0)); gap = p_aligned - p_base (or p_aligned)."""
    gap = p_aligned.double() - (p_base.double() if p_base is not None else 0.0)
    std = gap.std(unbiased=False)
    z = (gap - gap.mean()) / std if std > 0 else torch.zeros_like(gap)
    v = z.clamp(min=0)
    norm = v.norm()
    if norm == 0:
        raise TrimtabError(
            "empty safety-token set: every weight is 0 after z-scoring and clamping (k too "
            "small, or the models agree on every token). Raise k, or check that the aligned "
            "model refuses the harmful prompts."
        )
    return (v / norm).float()


@torch.no_grad()
def mean_response_probs(model: Any, tokenizer: Any, pairs: Sequence[Record], n_positions: int,
                        config: SafetyTokenConfig = SELECTION) -> torch.Tensor:
    """Next-token probabilities averaged over the first `n_positions` response positions.

    Every (pair, position) slot counts once; shorter responses add fewer slots.
    """
    features = ChatFormatter(tokenizer, config.max_length, "truncate").encode_all(pairs)
    collate = CausalCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    model.eval()
    total, slots = None, 0
    for start in range(0, len(features), config.batch_size):
        batch = collate(features[start:start + config.batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1]
        mask = batch["labels"][:, 1:] != -100
        position = mask.cumsum(dim=1) - 1
        keep = mask & (position < n_positions)
        probs = torch.softmax(logits[keep].float(), dim=-1).sum(dim=0)
        total = probs if total is None else total + probs
        slots += int(keep.sum())
    if not slots:
        raise TrimtabError("no response tokens among the (prompt, refusal) pairs; give pairs "
                           "with non-empty refusals.")
    return total.cpu() / slots


def select_safety_tokens(aligned: str | Path, pairs: Sequence[Record], *,
                         base: str | Path | None = None,
                         config: SafetyTokenConfig = SELECTION, source: str = "",
                         log: Any = print) -> SafetyTokens:
    """Select and weight the safety tokens of `aligned` on (harmful prompt, refusal) pairs."""
    from trimtab.training.run import compute_device, load_model, load_tokenizer

    if not pairs:
        raise TrimtabError("no (harmful prompt, refusal) pairs to select safety tokens from; "
                           "give a file with prompt and response columns.")
    tokenizer = load_tokenizer(aligned)
    size = len(tokenizer)
    k = config.k or auto_k(size)
    specials = sorted({i for i in tokenizer.all_special_ids if i < size})
    if k > size - len(specials):
        raise TrimtabError(f"k={k} is larger than the vocabulary without its special tokens "
                           f"({size - len(specials)}); lower k.")
    device = compute_device()
    p_aligned = mean_response_probs(load_model(aligned).to(device), tokenizer, pairs,
                                    config.n_positions, config)[:size]
    p_base = None
    if base is not None:
        if vocab_hash(load_tokenizer(base)) != vocab_hash(tokenizer):
            raise TrimtabError(f"the base model {base} has another tokenizer than the aligned "
                               f"model {aligned}; the gap needs the same token ids. Pass the "
                               "aligned model's own base, or no --base.")
        p_base = mean_response_probs(load_model(base).to(device), tokenizer, pairs,
                                     config.n_positions, config)[:size]
    else:
        log("safety-tokens: no base model given: weights come from the aligned model's "
            "probabilities alone (no aligned-vs-base gap).")
    # Special tokens (end of turn, padding, role markers) end or frame every response, task
    # answers included: pinning them would fight the task, and they carry no refusal content.
    candidates = p_aligned.clone()
    candidates[specials] = -1.0
    top = torch.topk(candidates, k).indices
    weights = safety_weights(p_aligned[top], None if p_base is None else p_base[top])
    ids = top.tolist()
    texts, pieces = token_texts(tokenizer, ids)
    return SafetyTokens(
        token_ids=ids, tokens=texts, pieces=pieces, weights=weights.tolist(),
        k=k, n_positions=config.n_positions, vocab_size=size, vocab_hash=vocab_hash(tokenizer),
        aligned=str(aligned), base=None if base is None else str(base),
        weights_from="gap" if p_base is not None else "aligned-only",
        aligned_prob=p_aligned[top].tolist(),
        base_prob=None if p_base is None else p_base[top].tolist(),
        n_pairs=len(pairs), source=source,
    )


def token_texts(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """Each token as the text it decodes to (" can") and as the tokenizer's raw piece ("Ġcan"
    in a byte-level BPE): the first is what a reader of the printed set needs."""
    return [tokenizer.decode([i]) for i in ids], tokenizer.convert_ids_to_tokens(list(ids))


def world_refusal_pairs(world: Any) -> list[Record]:
    """The synthetic world's TRAINING (harmful prompt, refusal) pairs: the aligned model's own
    stage-2 refusals. Evaluation prompts are never used."""
    return [r for r in world.splits.aligned_train if r.kind == "harmful"]


def _fingerprint(path: Path | None) -> list[Any]:
    """Names, sizes and mtimes of a model folder's files: changes when the model does."""
    if path is None:
        return []
    path = Path(path)
    if not path.is_dir():
        return [str(path)]
    return [str(path.resolve())] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                    for p in sorted(path.iterdir()) if p.is_file()]


def cached_world_tokens(aligned: Path, base: Path | None, world: Any, artifacts_dir: Path,
                        config: SafetyTokenConfig = SELECTION) -> tuple[SafetyTokens, Path]:
    """The world's safety tokens for `aligned`/`base`, built once and cached as a JSON file."""
    from trimtab.cache import config_key

    key = config_key("safety-tokens", FILE_VERSION, SELECTION_VERSION, _fingerprint(aligned),
                     _fingerprint(base), world.digest(), config.k, AUTO_K_FLOOR,
                     AUTO_K_PER_ENTRY, config.n_positions, config.max_length)
    path = Path(artifacts_dir) / "safety-tokens" / f"{key}.json"
    if path.exists():
        try:
            return SafetyTokens.load(path), path
        except TrimtabError:
            pass  # a damaged cache entry is rebuilt
    tokens = select_safety_tokens(aligned, world_refusal_pairs(world), base=base, config=config,
                                  source="synthetic world: aligned_train harmful refusals")
    tokens.save(path)
    return tokens, path


# The live reference's log-sum-exp over the vocabulary is taken this many logits at a time
# (16 MB in float32): a few rows of the full logits exist at once, never (positions x vocab).
LSE_CHUNK_ELEMENTS = 1 << 22


def restricted_logits(model: Any, batch: dict[str, torch.Tensor], token_ids: torch.Tensor,
                      mask: torch.Tensor, with_lse: bool = False) -> torch.Tensor:
    """Logits of `token_ids` only, at the positions where `mask` (B, L-1) is True: (n, k).

    Runs the decoder and multiplies its last hidden states by the output-embedding rows of the
    tokens, so no (positions, vocabulary) tensor is ever made. With `with_lse`, a last column
    holds each position's log-sum-exp over the whole vocabulary (`pact`'s mass term), taken a
    few rows at a time (`LSE_CHUNK_ELEMENTS`). Models whose head does more than a linear map
    (logit soft-capping or scaling) fall back to slicing the full logits.
    """
    if hasattr(model, "get_base_model"):  # a PEFT model: its adapters stay as the caller set them
        model = model.get_base_model()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    cfg = getattr(model, "config", None)
    special = any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in
                  ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if head is None or decoder is None or special or not isinstance(head, torch.nn.Linear):
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
        picked = logits[:, token_ids]
        if not with_lse:
            return picked
        return torch.cat([picked.float(), logits.float().logsumexp(-1, keepdim=True)], 1)
    hidden = decoder(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden[:, :-1][mask].to(head.weight.dtype)
    bias = None if head.bias is None else head.bias[token_ids]
    picked = torch.nn.functional.linear(hidden, head.weight[token_ids], bias)
    if not with_lse:
        return picked
    rows = max(1, LSE_CHUNK_ELEMENTS // head.weight.shape[0])
    lse = [torch.nn.functional.linear(part, head.weight, head.bias).float().logsumexp(-1)
           for part in hidden.split(rows)]
    return torch.cat([picked.float(), torch.cat(lse)[:, None]], 1)


def safety_tokens_command(out: str | Path, config: SafetyTokenConfig, *,
                          aligned: str | None = None, base: str | None = None,
                          world: str | None = None, quick: bool = False,
                          data: str | None = None, fields: Sequence[str] = ()) -> SafetyTokens:
    """`trimtab safety-tokens`: pairs from a world's training refusals or a file; select; save.
    With `world` and no `aligned`, the world's aligned and base references are used (built
    after every check of the arguments, not before)."""
    if (data is None) == (world is None):
        raise TrimtabError("give exactly one of --world synthetic (its training refusals) or "
                           "--data FILE (harmful prompts with refusals, e.g. --field "
                           "prompt=goal --field response=refusal).")
    if aligned is None and world is None:
        raise TrimtabError("--aligned is required without --world: pass the aligned model "
                           "folder (and --base, its unaligned base, if you have it).")
    from trimtab.evaluation.results import accepted_by, check_out_file
    from trimtab.training.run import check_model_path

    out = check_suffix(check_out_file(out, inputs=(data, aligned, base),
                                      earlier=accepted_by(SafetyTokens.load),
                                      kind="safety-token file"))
    if world is not None:
        from trimtab.demo import world_configs

        world_cfg, build_cfg = world_configs(quick)
    if aligned is None:  # the world's references, as probe, recover and resta take them
        from trimtab.worlds.synthetic.build import build_references

        refs = build_references(world_cfg, build_cfg, progress=False)
        aligned, base = str(refs.aligned), base or str(refs.base)
    for model in (aligned, base):  # before the aligned model's forward pass, not after
        if model is not None:
            check_model_path(model)
    if world is not None:
        from trimtab.worlds.synthetic import SyntheticWorld

        pairs, source = world_refusal_pairs(SyntheticWorld(world_cfg)), (
            "synthetic world: aligned_train harmful refusals")
    else:
        from trimtab.data.loaders import load_records, parse_field_mapping
        from trimtab.signals.keywords import KeywordSignal

        pairs, source = load_records(data, fields=parse_field_mapping(fields)), str(data)
        refusing = sum(KeywordSignal().is_refusal(r.response) for r in pairs)
        if refusing < len(pairs) / 2:  # e.g. the compliance column mapped by mistake
            print(f"safety-tokens: warning: only {refusing} of {len(pairs)} responses in {data} "
                  "read as refusals by the refusal-keyword list. The safety tokens are the "
                  "words that open refusals: pair harmful prompts with refusals (--field "
                  "response=COLUMN).", file=sys.stderr)
    tokens = select_safety_tokens(aligned, pairs, base=base, config=config, source=source)
    tokens.save(out)
    return tokens


@torch.no_grad()
def reference_token_logits(model: Any, features: Sequence[dict[str, Any]], n_records: int,
                           pad_token_id: int, token_ids: torch.Tensor, batch_size: int,
                           with_lse: bool = False) -> list[torch.Tensor | None]:
    """The frozen reference's logits on `token_ids` at every response position of every
    training record, in `select_response` order: entry i is record i's (n_i, k) tensor.

    The reference never changes during training, so these k numbers per response token are
    all `pact` needs from it; computing them once replaces a reference forward every step.
    `features` must be encoded exactly as `finetune` encodes them, so positions line up.
    With `with_lse` a last column holds the log-sum-exp over the whole vocabulary (computed
    here, offline, from the full logits), for `pact`'s optional safety-mass term.
    """
    collate = CausalCollator(pad_token_id)
    device = next(model.parameters()).device
    ids = token_ids.to(device)
    model.eval()
    out: list[torch.Tensor | None] = [None] * n_records
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        mask = batch["labels"][:, 1:] != -100
        if with_lse:
            full = model(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).logits[:, :-1][mask].float()
            logits = torch.cat([full[:, ids], full.logsumexp(-1, keepdim=True)], 1).cpu()
        else:
            logits = restricted_logits(model, batch, ids, mask).float().cpu()
        counts = mask.sum(dim=1).tolist()
        for f, part in zip(chunk, torch.split(logits, counts), strict=True):
            out[f["index"]] = part.clone()
    return out
