"""Every `sim` command line the README shows names options the command has: a README that documents a flag the
parser does not know fails here."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from sim.cli.main import build_parser

README = Path(__file__).resolve().parents[3] / "README.md"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_lines(text: str) -> list[str]:
    """`sim ...` lines of code blocks (continuations joined, comments cut) and inline code spans."""
    lines = []
    in_block = False
    pending = ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            for start in ("sim ", ".venv/bin/sim "):
                if start in line and (line.startswith(start) or f"&& {start}" in line):
                    lines.append(line[line.index(start) :].split("  #")[0])
        else:
            lines += [m for m in re.findall(r"`((?:\.venv/bin/)?sim [^`]*)`", raw)]
    return lines


def options_of(line: str, parser: argparse.ArgumentParser) -> tuple[argparse.ArgumentParser, list[str]]:
    words = shlex.split(line.replace("[", " ").replace("]", " "), posix=True)[1:]
    current = parser
    while words and words[0].split("/")[0] in subcommands(current):  # `replay/compare`: the first of them
        current = subcommands(current)[words.pop(0).split("/")[0]]
    flags = []
    for word in words:
        if word.startswith("--"):
            flags += [f.split("=")[0] for f in word.split("/") if f.startswith("--")]
    return current, flags


def test_readme_command_lines_name_real_options() -> None:
    parser = build_parser()
    unknown = []
    lines = command_lines(README.read_text())
    assert len(lines) > 20  # the README's examples were found
    for line in lines:
        command, flags = options_of(line, parser)
        known = set(command._option_string_actions)
        unknown += [f"{line!r}: {flag}" for flag in flags if flag not in known]
    assert unknown == []


def test_replay_option_table_names_real_options() -> None:
    text = README.read_text()
    table = text[text.index("### Options of `replay` and `compare`") : text.index("### The KV budget")]
    flags = re.findall(r"^\| `(--[a-z-]+)", table, re.M)
    assert len(flags) > 15
    replay = subcommands(build_parser())["replay"]
    assert [f for f in flags if f not in replay._option_string_actions] == []


def test_the_checker_finds_an_unknown_option() -> None:
    command, flags = options_of("sim trace scale t.csv --target-rate 5 -o x.csv", build_parser())
    assert flags == ["--target-rate"] and "--target-rate" not in command._option_string_actions


def test_the_rate_of_a_scaled_trace_is_set_with_to_rate() -> None:
    """`sim trace scale --rate` reads a length-only trace at that rate; the README's capacity search scales a trace to
    a rate, which is `--to-rate`."""
    text = README.read_text()
    scale = subcommands(subcommands(build_parser())["trace"])["scale"]
    assert "--to-rate" in scale._option_string_actions
    assert "sim trace scale --to-rate" in text and "sim trace scale --rate`" not in text
