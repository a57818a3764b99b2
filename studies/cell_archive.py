"""A committed copy of the Fashion-MNIST study's cell cache, so that the study outlives its machine.

The cell cache (:mod:`studies.fmnist_eval`, ``runs/fmnist-cells/``, git-ignored) holds what took
core-hours to compute: per-image correctness of every (model, arm, chip, age, GDC) cell and the
µ sweeps. A fresh checkout has none of it, so a later session had to recompute every cell before
it could add one. The report folder therefore keeps an archive beside its ``results.json``:
``<report>/cells/<model digest>.zip``, one deflated zip per model whose members are the files
under ``<cache>/<model digest>/``, named by their path relative to that folder.

* :func:`restore` writes every archived file the cache lacks (before a run computes what is missing);
* :func:`archive` adds the cache's files the archive lacks (after the run), rewriting an archive
  only when it gains a file, so that an unchanged study leaves git clean.

Both write whole files and rename them, so an interrupted run leaves the old archive or the new.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from studies.common import REPORTS_DIR

#: The report folder's archive (``reports/fmnist/cells``).
ARCHIVE = "cells"
COMMITTED = REPORTS_DIR / "fmnist" / ARCHIVE
#: Cache files worth keeping: packed cells (``.npy``) and µ sweeps (``.json``).
SUFFIXES = (".npy", ".json")


def archive_path(folder: Path, digest: str) -> Path:
    return Path(folder) / f"{digest}.zip"


def _read(path: Path) -> dict[str, bytes]:
    if not path.is_file():
        return {}
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _cached(cache: Path, digest: str) -> dict[str, Path]:
    root = Path(cache) / digest
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in SUFFIXES and ".tmp" not in p.name
    }


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def restore(folder: Path, cache: Path, digests: Iterable[str]) -> int:
    """Write each archived file of ``digests`` that ``cache`` lacks; the number written."""
    written = 0
    for d in digests:
        have = _cached(cache, d)
        for rel, data in _read(archive_path(folder, d)).items():
            if rel not in have:
                _write_atomic(Path(cache) / d / rel, data)
                written += 1
    return written


def archive(folder: Path, cache: Path, digests: Iterable[str]) -> int:
    """Add each cached file of ``digests`` that the archive lacks; the number added. An archive
    is rewritten only when it gains a file; a file already archived is never replaced (cells are
    immutable: a changed meaning gets a new profile hash, hence a new name)."""
    added = 0
    for d in digests:
        path = archive_path(folder, d)
        old = _read(path)
        new = {rel: p.read_bytes() for rel, p in _cached(cache, d).items() if rel not in old}
        if not new:
            continue
        _write_atomic(path, _zip({**old, **new}))
        added += len(new)
    return added


def _zip(files: dict[str, bytes]) -> bytes:
    """A deflated zip of ``files`` in name order, every member stamped with the zip epoch, so
    that equal contents give equal bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[name])
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    """``python -m studies.cell_archive --models models/zoo/fmnist runs/fmnist``: add the cached
    cells of those models to the committed archive, e.g. after ``--shard`` runs that wrote only
    the cache."""
    import argparse

    from studies.fmnist_eval import CACHE_DIR, find_models

    ap = argparse.ArgumentParser(prog="python -m studies.cell_archive", description=main.__doc__)
    ap.add_argument("--models", nargs="+", type=Path, required=True, help="folders/ONNX files of the models")
    ap.add_argument("--cache", type=Path, default=CACHE_DIR)
    ap.add_argument("--to", type=Path, default=COMMITTED, help="archive folder (default the committed one)")
    args = ap.parse_args(argv)
    digests = sorted({m.digest for m in find_models(args.models)})
    if not digests:
        raise SystemExit(f"no Fashion-MNIST models under {args.models}")
    print(f"{archive(args.to, args.cache, digests)} cache files added to {args.to} ({len(digests)} models)")


if __name__ == "__main__":
    main()
