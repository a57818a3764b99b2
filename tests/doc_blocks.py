"""The README's code blocks as data, and how a printed output is compared with a real one.
Test support code for tests/test_readme.py (the rules are documented in docs/development.md,
"The README is a test")."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

RUNNABLE_LANGS = {"bash": "bash", "sh": "bash", "python": "python"}
#: The marker that makes a docs/ page's blocks run like the README's.
RUNNABLE_PAGE = "<!-- runnable -->"
#: Where the examples say the service is; replaced by the test service's address.
ADDRESSES = ("localhost:8000", "127.0.0.1:8000")
#: Relative tolerance of a decimal number in an output block, unless the block sets `rtol=`.
DEFAULT_RTOL = 0.02

_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*(skip|output)\b(.*?)-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None  # the reason, when marked skip
    output: bool = False  # a text block marked as the previous block's output
    rtol: float = DEFAULT_RTOL

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE_LANGS and self.skip is None


def parse(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the directive comment just above it (blank
    lines between are allowed)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    directive: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line.strip())
        if m:
            directive = (m.group(1), m.group(2).strip())
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            start, lang, body = i + 1, fence.group(1).lower(), []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            block = Block(path, start, lang, "\n".join(body) + "\n")
            if directive is not None:
                kind, arg = directive
                if kind == "skip":
                    block.skip = arg.lstrip(":").strip()
                    if not block.skip:
                        raise ValueError(f"{block.where}: a skip needs a reason (<!-- skip: why -->)")
                else:
                    block.output = True
                    m_rtol = re.search(r"rtol=([0-9.eE+-]+)", arg)
                    if m_rtol:
                        block.rtol = float(m_rtol.group(1))
            blocks.append(block)
            directive = None
        elif line.strip():
            directive = None  # a directive applies only to the block right after it
        i += 1
    return blocks


def substitute_address(code: str, host_port: str) -> str:
    for address in ADDRESSES:
        code = code.replace(address, host_port)
    return code


# A number not glued to a word or a dot on its left ("conv1", "v2", "1.2.3" stay text).
_NUMBER = r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(rf"(?P<ellipsis>…)|(?P<space>\s+)|(?P<number>{_NUMBER})|(?P<text>.)", re.DOTALL)


def _pattern(expected: str) -> tuple[re.Pattern[str], list[str]]:
    parts: list[str] = []
    numbers: list[str] = []
    for m in _TOKEN.finditer(expected):
        if m.lastgroup == "ellipsis":
            parts.append(".*?")
        elif m.lastgroup == "space":
            parts.append(r"\s+")
        elif m.lastgroup == "number":
            numbers.append(m.group())
            parts.append(rf"({_NUMBER})(?![\d.])")
        else:
            parts.append(re.escape(m.group()))
    return re.compile("".join(parts), re.DOTALL), numbers


def _close(expected: str, actual: str, rtol: float) -> bool:
    want, got = float(expected), float(actual)
    if not any(c in expected for c in ".eE"):
        return got == want  # integers (labels, counts, shapes) match exactly
    decimals = len(expected.split(".")[1].split("e")[0].split("E")[0]) if "." in expected else 0
    return math.isclose(got, want, rel_tol=rtol, abs_tol=10.0**-decimals)


def output_mismatch(expected: str, actual: str, rtol: float = DEFAULT_RTOL) -> str | None:
    """None when ``actual`` matches the printed ``expected`` output (rules in docs/development.md),
    else what differs."""
    expected, actual = expected.strip(), actual.strip()
    pattern, numbers = _pattern(expected)
    m = pattern.fullmatch(actual)
    if m is None:
        return f"the output does not have the printed form\n--- printed:\n{expected}\n--- got:\n{actual}"
    for want, got in zip(numbers, m.groups()):
        if not _close(want, got, rtol):
            return f"printed {want}, got {got} (rtol {rtol})\n--- printed:\n{expected}\n--- got:\n{actual}"
    return None
