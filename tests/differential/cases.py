"""Case files: loading and placeholder substitution (the format: README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
CONFIGS_DIR = HERE / "configs"


@dataclass
class Case:
    path: Path
    text: str
    data: dict
    port_names: list[str]

    @property
    def name(self) -> str:
        return self.path.stem


def load_case(path: Path) -> Case:
    text = path.read_text()
    # Parse with YAML-safe tokens in place of the placeholders, then put the placeholders back
    # into the expected differences (their keys may name a port: stats of a listener).
    data = yaml.safe_load(substitute(text, lambda kind, name: f"DIFFTOKEN.{kind}.{name}."))
    for e in data.get("expected_differences") or []:
        if isinstance(e.get("key"), str):
            e["key"] = re.sub(r"DIFFTOKEN\.(port|upstream|closed_port|cert|key)\.([A-Za-z0-9_]+)\.",
                              lambda m: "{{closed_port}}" if m.group(1) == "closed_port"
                              else f"{{{{{m.group(1)}:{m.group(2)}}}}}", e["key"])
    names = sorted(set(m.group(2) for m in _PLACEHOLDER.finditer(text) if m.group(1) == "port"))
    if "listener" not in names:
        names.append("listener")
    return Case(path, text, data, names)


_PLACEHOLDER = re.compile(r"\{\{(port|upstream|closed_port|cert|key|access_log)(?::([A-Za-z0-9_]+))?\}\}")


def substitute(text: str, value) -> str:
    return _PLACEHOLDER.sub(lambda m: value(m.group(1), m.group(2)), text)


def all_cases() -> list[Path]:
    return sorted(CASES_DIR.glob("*.yaml"))
