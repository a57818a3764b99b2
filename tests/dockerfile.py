"""The Dockerfile and .dockerignore, parsed for the container tests (no Docker engine needed)."""

from __future__ import annotations

import fnmatch
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


# ------------------------------------------------------------------------------ Dockerfile parser
@dataclass
class Instruction:
    cmd: str  # upper-case keyword
    args: str  # the rest, continuation lines joined
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; enough for the checks here."""
    instructions: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.partition(" ")
        instructions.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]
            base = words[0]
            for k, v in global_args.items():
                base = base.replace("${" + k + "}", v).replace("$" + k, v)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if ins.cmd == "ARG":
                k, _, v = ins.args.partition("=")
                global_args[k.strip()] = v.strip()
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def env_of(stage: Stage) -> dict[str, str]:
    """ENV of a stage (``ENV k=v k2=v2`` form), later values win; $VAR references left as written."""
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            k, sep, v = word.partition("=")
            assert sep, f"Dockerfile:{ins.line}: use the ENV key=value form"
            env[k] = v
    return env


def copy_sources(ins: Instruction) -> tuple[list[str], str, dict[str, str]]:
    """(sources, destination, --flags) of a COPY instruction (shell or JSON form)."""
    args = ins.args
    flags: dict[str, str] = {}
    words = shlex.split(args) if not args.lstrip().startswith("[") else None
    if words is None:
        words = json.loads(args)
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    return words[:-1], words[-1], flags


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def runtime_stage() -> Stage:
    return parse_dockerfile(DOCKERFILE.read_text())[1][-1]


# ------------------------------------------------------------------------------ .dockerignore
def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        out.append((neg, pat.strip("/")))
    return out


def _pattern_matches(pat: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent folders; ** spans folders."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if pat.startswith("**/"):
            if fnmatch.fnmatchcase(parts[i - 1], pat[3:]):
                return True
        elif fnmatch.fnmatchcase(prefix, pat) and prefix.count("/") == pat.count("/"):
            return True
    return False


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative, forward slashes) out of the build context."""
    excluded = False
    for neg, pat in dockerignore_patterns():
        if _pattern_matches(pat, path):
            excluded = not neg
    return excluded


def build_context_files(src: str) -> list[str]:
    """Files under ``src`` that reach the build context."""
    root = REPO / src
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    rels = [p.relative_to(REPO).as_posix() for p in files]
    return [r for r in rels if not dockerignored(r)]
