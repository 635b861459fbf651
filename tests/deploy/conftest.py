"""The container's files as data, for the tests that check them against each other."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Dockerfile:
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuation lines joined
    env: dict[str, str] = field(default_factory=dict)

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def one(self, name: str) -> str:
        found = self.all(name)
        assert len(found) == 1, f"{name}: {found}"
        return found[0]


def parse_dockerfile(path: Path) -> Dockerfile:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    parsed = Dockerfile(instructions)
    for args in parsed.all("ENV"):
        parsed.env.update(item.split("=", 1) for item in shlex.split(args))
    return parsed


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def entrypoint_settings() -> set[str]:
    """The environment variables deploy/entrypoint.sh reads (tunelab serve reads TUNELAB_API_KEY itself)."""
    return set(re.findall(r"\$\{?(TUNELAB_[A-Z_]+)", (REPO / "deploy" / "entrypoint.sh").read_text()))
