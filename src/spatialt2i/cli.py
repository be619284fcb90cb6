"""The single entry point: ``spatialt2i <group> <command> ...``.

Each area of the package registers its own commands from a small ``cli`` module (``register``
takes the dict of group sub-parsers); heavy imports stay inside the command functions so that
``spatialt2i --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SpatialT2IError

GROUPS = {
    "world": "the built-in world: render, inspect, pretrain its tiny models",
    "data": "build, inspect and show pair datasets",
    "reward": "SpatialScore: init, train, evaluate",
    "rl": "GRPO fine-tuning of generators",
    "bench": "in-domain and public benchmarks",
    "serve": "HTTP servers (reward)",
    "review": "human review of pair datasets",
    "demo": None,
}
# Modules that register commands; a module that does not exist yet is skipped.
COMMAND_MODULES = (
    "spatialt2i.world.cli",
    "spatialt2i.data.cli",
    "spatialt2i.review.cli",
    "spatialt2i.reward.cli",
    "spatialt2i.reward.cli_pretrain",
    "spatialt2i.gen.cli",
    "spatialt2i.rl.cli",
    "spatialt2i.bench.cli",
    "spatialt2i.bench.cli_public",
    "spatialt2i.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spatialt2i", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="group", metavar="GROUP")
    top.required = True
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, help_ in GROUPS.items():
        if help_ is None:  # a group that is itself a command (registered by its module)
            continue
        p = top.add_parser(name, help=help_)
        groups[name] = p.add_subparsers(dest="command", metavar="COMMAND")
        groups[name].required = True
    groups["_top"] = top
    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpatialT2IError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
