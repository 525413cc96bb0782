"""A small Dockerfile reader for tests: instructions per stage, exec-form arguments, ENV."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.paths import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (ValueError if shell form)."""
        value = json.loads(self.args)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{self.keyword} is not in exec form: {self.args}")
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [instruction] = self.all(keyword)
        return instruction

    def env(self) -> dict[str, str]:
        """ENV values in ``key=value`` form, ``$VAR`` left unexpanded."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and ``\\`` continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.endswith("\\"):
            current += raw[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def parse(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), re.sub(r"\s+", " ", args.strip())
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?: AS (\S+))?", args, flags=re.IGNORECASE)
            assert match, f"unexpected FROM: {args}"
            stages.append(Stage(match[1], match[2]))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def healthcheck_command(stage: Stage) -> list[str]:
    """The exec-form command of the stage's HEALTHCHECK (options before CMD skipped)."""
    _, _, command = stage.one("HEALTHCHECK").args.partition("CMD ")
    return Instruction("CMD", command).exec_form()
