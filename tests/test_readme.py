"""The README as a test: every shell and Python block of README.md (and of docs/ pages marked
``<!-- runnable -->``) runs, in order, against a live service in a temporary state folder, and
every output block the README marks must match what the block before it printed.
Rules (markers, placeholders, tolerances): docs/development.md, "The README is a test"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import RUNNABLE_LANGS, RUNNABLE_PAGE, Block, output_mismatch, parse, substitute_address
from tests.service_process import REPO, run_service

BLOCK_TIMEOUT_S = 600  # the slowest block (the fleet example) takes ~10 s alone, minutes on a loaded machine


def documents() -> list[Path]:
    pages = sorted(
        p
        for p in (REPO / "docs").glob("*.md")
        if RUNNABLE_PAGE in (line.strip() for line in p.read_text(encoding="utf-8").splitlines())
    )
    return [REPO / "README.md", *pages]


def all_blocks() -> list[Block]:
    return [b for doc in documents() for b in parse(doc)]


# --- the matcher and the parser: fast, no service ---------------------------------------------


def test_output_matching_rules():
    assert output_mismatch("a 1.00 b", "a 1.01 b") is None  # within one unit of the last digit
    assert output_mismatch("a 1.00 b", "a 1.5 b") is not None  # beyond it and beyond 2 %
    assert output_mismatch("[2, 0]", "[2, 0]") is None
    assert output_mismatch("[2, 0]", "[2, 1]") is not None  # integers are exact
    assert output_mismatch('{"x":[…],"y":3}', '{"x":[[1,2],[3]],"y":3}') is None
    assert output_mismatch('{"x":[…],"y":3}', '{"x":[[1,2],[3]],"z":3}') is not None
    assert output_mismatch("a  b\nc", "a b    c") is None  # any run of whitespace
    assert output_mismatch("v 2.0", "v 2.3", rtol=0.2) is None
    assert output_mismatch("v 2.0", "v 2.3") is not None
    assert output_mismatch("conv1 7", "conv2 7") is not None  # a number after a letter is text
    assert output_mismatch("0.99", "0.9897777777777778") is None  # the printed value rounds the real one


def test_parser_reads_directives(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- skip: blocks -->\n```bash\nmake run\n```\n\n```sh\necho 1\n```\n"
        "<!-- output rtol=0.5 -->\n\n```text\n1\n```\ntext\n```python\nprint(2)\n```\n",
        encoding="utf-8",
    )
    blocks = parse(page)
    assert [(b.lang, b.skip, b.output, b.runnable) for b in blocks] == [
        ("bash", "blocks", False, False),
        ("sh", None, False, True),
        ("text", None, True, False),
        ("python", None, False, True),
    ]
    assert blocks[2].rtol == 0.5 and blocks[1].line == 6
    page.write_text("<!-- skip -->\n```bash\nx\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="reason"):
        parse(page)


def test_every_block_is_runnable_or_skipped_with_a_reason():
    blocks = all_blocks()
    runnable = [b for b in blocks if b.runnable]
    skipped = [b for b in blocks if b.lang in RUNNABLE_LANGS and b.skip]
    assert len(runnable) >= 10, "the README's examples should run"
    print("\nskipped blocks:")
    for b in skipped:
        print(f"  {b.where}: {b.skip}")
    for i, b in enumerate(blocks):
        if b.output:
            assert i > 0 and blocks[i - 1].runnable, f"{b.where}: an output block must follow a block that runs"
            assert b.lang == "text", f"{b.where}: output blocks are ```text"


def test_make_targets_named_in_the_docs_exist():
    texts = [(REPO / "README.md").read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md"))]
    targets = {t for text in texts for t in re.findall(r"`make ([a-z][\w-]*)", text)}
    targets |= {t for text in texts for t in re.findall(r"^make ([a-z][\w-]*)", text, re.M)}
    assert {"run", "test", "demo", "clean"} <= targets
    for target in sorted(targets):
        done = subprocess.run(
            ["make", "--no-print-directory", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"make {target}: {done.stderr}"
    clean = subprocess.run(
        ["make", "--no-print-directory", "-n", "clean"], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    assert all(env in clean for env in (".venv", ".venv-serve", ".venv-tools")), clean


# --- the examples against a live service ------------------------------------------------------


def _workdir(tmp: Path) -> Path:
    """A folder that looks like the repository (every top-level entry linked) but has its own
    state/ and runs/, so examples that write there do not touch the checkout."""
    work = tmp / "repo"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {"state", "runs", ".git", ".pytest_cache"}:
            (work / entry.name).symlink_to(entry)
    return work


def _run(block: Block, work: Path, base: str, env: dict[str, str], index: int) -> subprocess.CompletedProcess:
    code = substitute_address(block.code, base.removeprefix("http://"))
    if RUNNABLE_LANGS[block.lang] == "bash":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        script = work / f"readme_block_{index}.py"  # in the folder: the fleet example's workers re-import it
        script.write_text(code, encoding="utf-8")
        argv = [str(work / ".venv" / "bin" / "python"), script.name]
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


@pytest.mark.slow
def test_readme_examples_run_as_printed(tmp_path):
    if not (REPO / ".venv" / "bin" / "agedchip").exists():
        pytest.skip(".venv/bin/agedchip missing: run `make test` (it installs the project into .venv)")
    blocks = all_blocks()
    work = _workdir(tmp_path)
    with run_service(sys.executable, REPO, tmp_path / "state", tmp_path / "service.log") as (base, _proc):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGEDCHIP_")}
        env["AGEDCHIP_URL"] = base
        last: tuple[Block, str] | None = None
        for i, block in enumerate(blocks):
            if block.output:
                assert last is not None, f"{block.where}: output block without a block before it"
                ran, stdout = last
                problem = output_mismatch(block.code, stdout, block.rtol)
                assert problem is None, f"{block.where} (output of {ran.where}): {problem}"
                continue
            if not block.runnable:
                continue
            done = _run(block, work, base, env, i)
            assert done.returncode == 0, (
                f"{block.where} exited with {done.returncode}\n{block.code}\n"
                f"--- stdout:\n{done.stdout[-3000:]}\n--- stderr:\n{done.stderr[-3000:]}"
            )
            last = (block, done.stdout)


def test_links_stay_inside_the_repository():
    """Relative links of the README and docs/ pages name files that exist in the repository."""
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(REPO), f"{doc.name}: {target} points outside the repository"
            assert path.exists(), f"{doc.name}: {target} does not exist"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_anchors_exist():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, f"README.md: #{anchor} names no heading"
