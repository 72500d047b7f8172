"""Activation probe: is a prompt harmful, read from the reference model's hidden state.

A logistic regression on the hidden state of the last prompt token (the last token of the
chat template's generation prompt, where the model decides how to answer), at one layer.
The layer is picked by validation AUROC among a few candidates unless one is given.
`risk-kl` uses the probe's probability as the safety risk of a training prompt.

The probe file is safetensors (weights, feature mean and scale) with its metadata as JSON
in the safetensors header (hidden size, layer, model, a hash of the tokenizer vocabulary,
training sizes, AUROCs), and a readable copy next to it (`<name>.json`). No pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trimtab.config import SEED_MAX, CheckedConfig, option
from trimtab.data.formatting import check_chat_template, prompt_ids
from trimtab.errors import TrimtabError

FORMAT = "trimtab-probe"
FORMAT_VERSION = 1


@dataclass
class ProbeConfig(CheckedConfig):
    """How a probe is fitted (`trimtab probe train`, or `risk-kl` when it builds one)."""

    layers: list[int] = option([], "candidate layers (0 = embeddings, N = last block); one "
                                    "value fixes the layer; empty: about 1/4, 1/2, 3/4 and all "
                                    "of the depth", min=0)
    val_fraction: float = option(0.2, "share of the training prompts held out to pick the layer",
                                 min=0.05, max=0.5)
    l2: float = option(1e-3, "L2 penalty on the standardised probe weights", min=0.0)
    max_iter: int = option(200, "L-BFGS iterations of the logistic regression", min=1)
    max_per_class: int = option(3000, "most prompts per class used (a seeded subsample)", min=2)
    batch_size: int = option(64, "prompts per forward pass when reading hidden states", min=1)
    seed: int = option(0, "seed of the validation split and the subsample", min=0, max=SEED_MAX)
    pooling: str = option("last", "last: the state at the last prompt token (the paper's "
                                  "probe); mean: the mean state over the prompt's tokens",
                          choices=("last", "mean"))


# ------------------------------------------------------------------ small pure functions
def vocab_hash(tokenizer: Any) -> str:
    """A short hash of the tokenizer vocabulary: a probe read through another one is void."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def auroc(scores: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise TrimtabError("AUROC needs both harmful and benign prompts; give both classes.")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    uniq, inverse = torch.unique(s, return_inverse=True)  # average the ranks of tied scores
    mean_rank = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=len(uniq)).to(torch.float64)
    u = mean_rank[inverse][y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int
                 ) -> dict[str, torch.Tensor]:
    """Class-balanced, L2-penalised logistic regression on standardised features (L-BFGS)."""
    x = x.double()
    mean, scale = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / scale
    y = y.double()
    pos = y.mean().clamp(1e-6, 1 - 1e-6)
    weights = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))  # each class weighs one half
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(z @ w + b, y, reduction="none") * weights
                ).mean() + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"weight": w.detach().float(), "bias": b.detach().float(), "mean": mean.float(),
            "scale": scale.float()}


def logistic_probabilities(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(positive) of a `fit_logistic` model: sigmoid(w . (x - mean) / scale + b)."""
    return torch.sigmoid(((x.float() - mean) / scale) @ weight + bias)


def default_layers(n_layers: int) -> list[int]:
    """About 1/4, 1/2, 3/4 and all of the depth: where refusal features usually live."""
    return sorted({max(1, round(n_layers * f)) for f in (0.25, 0.5, 0.75, 1.0)})


# ------------------------------------------------------------------ reading hidden states
@torch.no_grad()
def last_prompt_states(model: Any, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int],
                       batch_size: int = 64, pooling: str = "last") -> dict[int, torch.Tensor]:
    """Hidden state at the last token of each chat-formatted prompt, per layer: (n, hidden).

    The last token is the end of the generation prompt, where the model decides how to
    answer. `pooling="mean"` averages the states of all the prompt's tokens instead.
    Right padding keeps every real token's state exact under causal attention, so the
    result does not depend on what else is in the batch.
    """
    if pooling not in ("last", "mean"):
        raise TrimtabError(f"pooling {pooling!r} is not one of 'last', 'mean'.")
    check_chat_template(tokenizer)
    n_layers = model.config.num_hidden_layers
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise TrimtabError(f"layer(s) {bad} do not exist: the model has layers 0 (embeddings) "
                           f"to {n_layers}; pick from that range.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    try:
        for start in range(0, len(prompts), batch_size):
            ids = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
            length = max(map(len, ids))
            input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), length), dtype=torch.long)
            for i, row in enumerate(ids):
                input_ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            hidden = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           output_hidden_states=True).hidden_states
            last = torch.tensor([len(row) - 1 for row in ids], device=device)
            rows = torch.arange(len(ids), device=device)
            for layer in layers:
                states = hidden[layer].float()
                if pooling == "mean":
                    m = mask.to(device)[..., None].float()
                    out[layer].append(((states * m).sum(1) / m.sum(1)).cpu())
                else:
                    out[layer].append(states[rows, last].cpu())
    finally:
        model.train(was_training)
    return {layer: torch.cat(parts) for layer, parts in out.items()}


# ------------------------------------------------------------------ the probe
@dataclass
class Probe:
    """A fitted probe: `risk` gives P(harmful) per prompt in [0, 1]."""

    weight: torch.Tensor  # (hidden,)
    bias: torch.Tensor  # (1,)
    mean: torch.Tensor  # (hidden,) feature mean of the training prompts
    scale: torch.Tensor  # (hidden,) feature standard deviation
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def pooling(self) -> str:
        return str(self.meta.get("pooling", "last"))

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return logistic_probabilities(features, self.weight, self.bias, self.mean, self.scale)

    def check_compatible(self, model: Any, tokenizer: Any, where: str = "this model") -> None:
        """Raise unless `model` and `tokenizer` are the kind the probe was fitted on."""
        hidden = int(model.config.hidden_size)
        if hidden != int(self.meta["hidden_size"]):
            raise TrimtabError(
                f"the probe was fitted on a model with hidden size {self.meta['hidden_size']} "
                f"({self.meta.get('model')}), but {where} has {hidden}; fit a probe for this "
                "model with `trimtab probe train --model PATH`."
            )
        if self.layer > int(model.config.num_hidden_layers):
            raise TrimtabError(f"the probe reads layer {self.layer}, but {where} has only "
                               f"{model.config.num_hidden_layers}; fit a probe for this model.")
        if vocab_hash(tokenizer) != self.meta["vocab_hash"]:
            raise TrimtabError(
                f"the probe was fitted through another tokenizer (vocabulary hash "
                f"{self.meta['vocab_hash']}, {self.meta.get('model')}) than {where}'s "
                f"({vocab_hash(tokenizer)}); fit a probe with this model's tokenizer."
            )

    def risk(self, model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 64
             ) -> torch.Tensor:
        self.check_compatible(model, tokenizer)
        feats = last_prompt_states(model, tokenizer, prompts, [self.layer], batch_size,
                                   self.pooling)
        return self.probabilities(feats[self.layer])

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (safetensors, metadata in its header) and a readable `<stem>.json`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean,
                   "scale": self.scale}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT, "meta": json.dumps(self.meta)})
        tmp.replace(path)
        from trimtab.evaluation.results import write_json_atomic

        write_json_atomic(path.with_suffix(".json"), self.meta)
        return path


def load_probe(path: str | os.PathLike) -> Probe:
    """Read a probe file written by `Probe.save`; anything else is a clear error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TrimtabError(f"no probe file at {path}; fit one with `trimtab probe train "
                           "--model PATH --out probe.safetensors`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # safetensors raises several types for a bad file
        raise TrimtabError(f"{path} is not a safetensors probe file ({err}); fit one with "
                           "`trimtab probe train`.") from err
    if header.get("format") != FORMAT or not {"weight", "bias", "mean", "scale"} <= set(tensors):
        raise TrimtabError(f"{path} is a safetensors file but not a trimtab probe; fit one with "
                           "`trimtab probe train`.")
    meta = json.loads(header["meta"])
    if meta.get("format_version") != FORMAT_VERSION:
        raise TrimtabError(f"{path} has probe format {meta.get('format_version')}, this trimtab "
                           f"reads {FORMAT_VERSION}; fit the probe again.")
    return Probe(tensors["weight"], tensors["bias"], tensors["mean"], tensors["scale"], meta)


def _subsample(prompts: Sequence[str], n: int, rng: random.Random) -> list[str]:
    unique = list(dict.fromkeys(prompts))  # a repeated prompt would leak across the split
    return rng.sample(unique, n) if len(unique) > n else unique


def train_probe(model: Any, tokenizer: Any, harmful: Sequence[str], benign: Sequence[str],
                config: ProbeConfig | None = None, model_name: str = "") -> Probe:
    """Fit the probe; `meta["val_auroc"]` has the validation AUROC of every candidate layer.

    Candidates are fitted on (1 - val_fraction) of the prompts and scored on the rest; the
    chosen layer is then refitted on all of them.
    """
    config = config or ProbeConfig()
    rng = random.Random(config.seed)
    harmful = _subsample(harmful, config.max_per_class, rng)
    benign = _subsample(benign, config.max_per_class, rng)
    if len(harmful) < 2 or len(benign) < 2:
        raise TrimtabError(f"a probe needs at least 2 distinct harmful and 2 benign prompts, got "
                           f"{len(harmful)} and {len(benign)}; give more labelled prompts.")
    layers = list(config.layers) or default_layers(model.config.num_hidden_layers)
    prompts = harmful + benign
    labels = torch.tensor([1] * len(harmful) + [0] * len(benign))
    feats = last_prompt_states(model, tokenizer, prompts, layers, config.batch_size,
                               config.pooling)
    val = torch.zeros(len(prompts), dtype=torch.bool)
    for cls in (1, 0):  # stratified split
        idx = [i for i in range(len(prompts)) if int(labels[i]) == cls]
        rng.shuffle(idx)
        val[idx[: max(1, round(config.val_fraction * len(idx)))]] = True
    val_auroc = {}
    for layer in layers:
        fitted = fit_logistic(feats[layer][~val], labels[~val], config.l2, config.max_iter)
        probe = Probe(**fitted)
        val_auroc[layer] = auroc(probe.probabilities(feats[layer][val]), labels[val])
    best = max(layers, key=lambda layer: (val_auroc[layer], layer))  # ties: the deeper one
    meta = {
        "format_version": FORMAT_VERSION, "model": model_name,
        "model_type": getattr(model.config, "model_type", ""),
        "hidden_size": int(model.config.hidden_size),
        "num_hidden_layers": int(model.config.num_hidden_layers), "layer": best,
        "pooling": config.pooling,
        "vocab_hash": vocab_hash(tokenizer), "n_harmful": len(harmful), "n_benign": len(benign),
        "n_validation": int(val.sum()), "val_auroc": {str(k): v for k, v in val_auroc.items()},
        "config": asdict(config),
    }
    fitted = fit_logistic(feats[best], labels, config.l2, config.max_iter)
    return Probe(**fitted, meta=meta)


# ------------------------------------------------------------------ the synthetic world
def synthetic_training_prompts(world: Any) -> tuple[list[str], list[str]]:
    """(harmful, benign) prompts from the world's training data only.

    Harmful: the aligned reference's harmful requests (plain and wrapped in training
    attacks). Benign: its general, borderline and unanswerable prompts and both downstream
    tasks' training prompts. The contamination pool is left out, so the risks `risk-kl`
    assigns to it are predictions, not memories.
    """
    s = world.splits
    harmful = [r.prompt for r in s.aligned_train if r.kind == "harmful"]
    benign = [r.prompt for r in s.aligned_train if r.kind != "harmful"]
    benign += [r.prompt for rs in s.task_train.values() for r in rs]
    return harmful, benign


def synthetic_heldout_prompts(world: Any) -> tuple[list[str], list[str]]:
    """(harmful, benign) evaluation prompts no probe trains on.

    Harmful: the evaluation harmful requests, plain and inside held-out attack wrappers.
    Benign: borderline requests with alarming words, general, unanswerable and task tests.
    """
    e = world.splits.eval_sets
    harmful = [r.prompt for r in (*e["harmful"], *e["jailbreak"])]
    benign = [r.prompt for name in ("borderline", "general", "unanswerable")
              for r in e[name]]
    benign += [r.prompt for rs in world.splits.task_test.values() for r in rs]
    return harmful, benign


def heldout_auroc(probe: Probe, model: Any, tokenizer: Any, harmful: Sequence[str],
                  benign: Sequence[str], batch_size: int = 64) -> float:
    scores = probe.risk(model, tokenizer, [*harmful, *benign], batch_size)
    return auroc(scores, [1] * len(harmful) + [0] * len(benign))


def _weights_stamp(model_path: str | os.PathLike) -> list[Any]:
    """Names, sizes and mtimes of a model folder's weight files: part of a probe's cache key."""
    folder = Path(model_path)
    if not folder.is_dir():
        return [str(model_path)]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.glob("*.safetensors"))]


def world_probe(model: Any, tokenizer: Any, model_path: str | os.PathLike, world: Any,
                cache_dir: str | os.PathLike, config: ProbeConfig | None = None) -> Probe:
    """The probe of a synthetic world's reference, fitted on its training prompts, cached.

    Its held-out AUROC (evaluation prompts, see `synthetic_heldout_prompts`) is measured
    once and kept in `meta["heldout_auroc"]`; it is a report, never a training signal.
    """
    from trimtab.cache import config_key

    config = config or ProbeConfig()
    key = config_key("probe", FORMAT_VERSION, str(Path(model_path).resolve()),
                     _weights_stamp(model_path), world.digest(), asdict(config),
                     vocab_hash(tokenizer))
    path = Path(cache_dir) / "probes" / f"{key}.safetensors"
    if path.is_file():
        return load_probe(path)
    harmful, benign = synthetic_training_prompts(world)
    probe = train_probe(model, tokenizer, harmful, benign, config, model_name=str(model_path))
    probe.meta["heldout_auroc"] = heldout_auroc(probe, model, tokenizer,
                                                *synthetic_heldout_prompts(world),
                                                config.batch_size)
    probe.save(path)
    return probe


def _check_probe_out(out: Path, *inputs: str | None) -> None:
    """Refuse an output that would overwrite an input or a file that is not a probe: the
    probe and its `.json` replace whatever is at those two paths."""
    from trimtab.evaluation.results import accepted_by, check_out_file

    check_out_file(out, inputs=inputs, earlier=accepted_by(load_probe), kind="probe file")
    sidecar = out.with_suffix(".json")
    check_out_file(sidecar, inputs=inputs, label=f"--out {out} (its {sidecar.name})")
    if not out.exists() and sidecar.exists():
        raise TrimtabError(f"--out {out} would overwrite {sidecar}, which belongs to no "
                           "probe; choose another --out.")


def fit_probe_command(out: str | os.PathLike, config: ProbeConfig, *, model: str | None = None,
                      world: str | None = None, quick: bool = False,
                      harmful: str | None = None, benign: str | None = None,
                      fields: Sequence[str] = ()) -> list[str]:
    """`trimtab probe train`: fit, save, and return the lines to print (AUROC per layer)."""
    from trimtab.training.run import compute_device, load_model, load_tokenizer

    out = Path(out)
    if out.suffix != ".safetensors" or out.is_dir():
        raise TrimtabError(f"--out {out} must be a file path ending in .safetensors (its "
                           "metadata goes next to it as .json).")
    _check_probe_out(out, model, harmful, benign)
    files = harmful is not None or benign is not None
    if (world is not None) == files or (files and (harmful is None or benign is None)):
        raise TrimtabError("give either --world synthetic, or both --harmful FILE and "
                           "--benign FILE (prompt files; map columns with --field prompt=COL).")
    heldout = None
    if world is not None:
        from trimtab.demo import world_configs
        from trimtab.worlds.synthetic.build import build_references
        from trimtab.worlds.synthetic.generator import SyntheticWorld

        world_cfg, build_cfg = world_configs(quick)
        the_world = SyntheticWorld(world_cfg)
        model = model or str(build_references(world_cfg, build_cfg, progress=False).aligned)
        pos, neg = synthetic_training_prompts(the_world)
        heldout = synthetic_heldout_prompts(the_world)
    else:
        from trimtab.data.loaders import load_records, parse_field_mapping

        if model is None:
            raise TrimtabError("--model is required with --harmful/--benign: pass the HF "
                               "folder (or hub name) whose hidden states the probe reads.")
        mapping = parse_field_mapping(fields)
        pos, neg = ([r.prompt for r in load_records(path, fields=mapping,
                                                    require_response=False)]
                    for path in (harmful, benign))
    lm, tokenizer = load_model(model).to(compute_device()), load_tokenizer(model)
    probe = train_probe(lm, tokenizer, pos, neg, config, model_name=str(model))
    lines = [f"layer {layer}: validation AUROC {value:.4f}"
             + ("  <- chosen" if int(layer) == probe.layer else "")
             for layer, value in probe.meta["val_auroc"].items()]
    if heldout is not None:
        probe.meta["heldout_auroc"] = heldout_auroc(probe, lm, tokenizer, *heldout,
                                                    config.batch_size)
        lines.append(f"held-out AUROC (evaluation prompts, attacks and borderline included): "
                     f"{probe.meta['heldout_auroc']:.4f}")
    probe.save(out)
    lines.append(f"wrote {out} and {out.with_suffix('.json')} ({probe.meta['n_harmful']} "
                 f"harmful, {probe.meta['n_benign']} benign prompts, layer {probe.layer})")
    return lines
