"""`trimtab recover` and `trimtab resta`: the post-hoc steps on model folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trimtab.config import (
    add_dataclass_arguments,
    build_config,
    config_to_dict,
    read_yaml_mapping,
    without_command_flags,
)
from trimtab.errors import TrimtabError
from trimtab.recovery.config import SYNTHETIC_RECOVER, RecoverConfig, RestaConfig


def _world_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", choices=("synthetic",),
                   help="take defaults (aligned, base, data) from the synthetic world")
    p.add_argument("--quick", action="store_true", help="the small world of --quick runs")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="YAML file of options; flags given on the command line win")


def add_parsers(sub: Any) -> None:
    rec = sub.add_parser(
        "recover", help="restore a few fine-tuned weights to the aligned values (post-hoc)",
        description="Post-hoc alignment recovery (DESIGN.md, recover). The inputs are never "
                    "modified; the result is a new HF folder with recover_log.json inside.")
    rec.add_argument("--aligned", help="the aligned model before fine-tuning (default with "
                                       "--world synthetic: its aligned reference)")
    rec.add_argument("--finetuned", required=True, help="fine-tuned model or LoRA adapter folder")
    rec.add_argument("--harmful-prompts", metavar="FILE",
                     help="harmful prompts: .txt (one per line), .jsonl/.json/.csv/.tsv "
                          "(column `prompt`, or map it with --harmful-field)")
    rec.add_argument("--harmful-field", action="append", default=[], metavar="prompt=COLUMN",
                     help="column mapping for --harmful-prompts, e.g. --harmful-field "
                          "prompt=goal (AdvBench)")
    rec.add_argument("--task-eval", metavar="FILE",
                     help="task examples with exact answers (columns prompt, response), from "
                          "TRAINING data, not the test set")
    rec.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                     help="column mapping for --task-eval, e.g. --field response=label")
    rec.add_argument("--task", default="general", choices=("general", "domain"),
                     help="the world's task (with --world)")
    rec.add_argument("--output-dir", required=True, help="where the recovered model is saved")
    _world_flags(rec)
    add_dataclass_arguments(rec, RecoverConfig, group_title="recover options")
    rec.set_defaults(func=cmd_recover)

    res = sub.add_parser(
        "resta", help="task-arithmetic baseline: fine-tuned + scale * (aligned - base)")
    res.add_argument("--finetuned", required=True, help="fine-tuned model or LoRA adapter folder")
    res.add_argument("--aligned", help="aligned model (default with --world: its reference)")
    res.add_argument("--base", help="the unaligned model alignment started from (default with "
                                    "--world: its base)")
    res.add_argument("--output-dir", required=True, help="where the result is saved")
    _world_flags(res)
    add_dataclass_arguments(res, RestaConfig, group_title="resta options")
    res.set_defaults(func=cmd_resta)


def _world(args: argparse.Namespace) -> tuple[Any, Any]:
    from trimtab.demo import world_configs
    from trimtab.worlds.synthetic import SyntheticWorld
    from trimtab.worlds.synthetic.build import build_references

    world_cfg, build_cfg = world_configs(args.quick)
    return SyntheticWorld(world_cfg), build_references(world_cfg, build_cfg, progress=False)


def _prompts(path: str, fields: list[str]) -> list[str]:
    from trimtab.data.loaders import load_records, parse_field_mapping

    if Path(path).suffix == ".txt":
        if fields:
            raise TrimtabError(f"{path} is plain text, one prompt per line: it has no columns "
                               "for --harmful-field to map; leave it out.")
        if not Path(path).is_file():
            raise TrimtabError(f"no such file {path}; check the path.")
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise TrimtabError(f"{path} has no prompts; write one per line.")
        return lines
    mapping = parse_field_mapping(fields)
    return [r.prompt for r in load_records(path, fields=mapping, require_response=False,
                                           field_flag="--harmful-field")]


def cmd_recover(args: argparse.Namespace) -> int:
    from trimtab.data.loaders import load_records, parse_field_mapping
    from trimtab.recovery.api import recover_checkpoint
    from trimtab.recovery.validation import recovery_data, synthetic_recovery_data

    preset: dict[str, Any] = {}
    if args.world is not None:  # the world's preset, under any YAML file and flags
        default = config_to_dict(RecoverConfig())
        preset = {k: v for k, v in config_to_dict(SYNTHETIC_RECOVER).items() if default[k] != v}
    if args.config:
        preset.update(without_command_flags(read_yaml_mapping(args.config), args))
    config = build_config(RecoverConfig, args=args, overrides=preset,  # bad keys: the YAML's
                          overrides_origin=str(args.config or "the synthetic preset"))
    files = (args.harmful_prompts, args.task_eval)
    if args.world is None and None in files:
        raise TrimtabError("give --harmful-prompts FILE and --task-eval FILE, or --world "
                           "synthetic to take both from the world's training pools.")
    if args.world is None and args.task != "general":
        raise TrimtabError("--task picks one of the synthetic world's tasks: use it with "
                           "--world synthetic (without it, --task-eval is the task).")
    if args.world is not None and (any(files) or args.field or args.harmful_field):
        raise TrimtabError("--world synthetic brings its own prompts; leave out "
                           "--harmful-prompts, --task-eval and their --field/--harmful-field "
                           "(or --world).")
    aligned = args.aligned
    if args.world is not None:
        world, refs = _world(args)
        aligned = aligned or str(refs.aligned)

        def data_fn(_tok: Any) -> Any:
            return synthetic_recovery_data(world, args.task, config)
    else:
        if aligned is None:
            raise TrimtabError("--aligned is required without --world: pass the aligned model "
                               "folder the fine-tuning started from.")
        harmful = _prompts(args.harmful_prompts, args.harmful_field)
        tasks = load_records(args.task_eval, fields=parse_field_mapping(args.field))

        def data_fn(_tok: Any) -> Any:
            return recovery_data(harmful, tasks, config)
    _, log = recover_checkpoint(aligned, args.finetuned, data_fn, config, args.output_dir)
    print(json.dumps({k: log[k] for k in ("layer", "best_step", "stopped", "fraction_changed",
                                          "fraction_changed_of_all", "before", "after",
                                          "seconds", "peak_memory_mb")}
                     | {"output_dir": args.output_dir}, indent=2))
    return 0


def cmd_resta(args: argparse.Namespace) -> int:
    from trimtab.recovery.api import resta_checkpoint

    config = build_config(RestaConfig, args=args, yaml_path=args.config)
    aligned, base = args.aligned, args.base
    if args.world is not None:
        _, refs = _world(args)
        aligned, base = aligned or str(refs.aligned), base or str(refs.base)
    if aligned is None or base is None:
        raise TrimtabError("resta needs --aligned and --base (the unaligned model), or --world "
                           "synthetic for the world's own.")
    _, log = resta_checkpoint(args.finetuned, aligned, base, config, args.output_dir)
    print(json.dumps(log | {"output_dir": args.output_dir}, indent=2))
    return 0
