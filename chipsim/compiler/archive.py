"""Models with external data, uploaded as a ``.zip`` or ``.tar`` (optionally gzip/bz2/xz
compressed) holding the ``.onnx`` file and its data files.

An archive is untrusted input: its members are written into a private temporary folder (mode
0700, removed afterwards) only after every member has passed these checks, and the model's
external-data locations are checked the same way before anything is read:

- a member is a regular file or a folder: symlinks, hardlinks, devices and FIFOs are refused;
- its path is relative, with no ``..`` component, no backslash, no drive letter, no NUL, and
  not given twice (so no path can leave the folder, and none can be written through a link);
- at most :attr:`ArchiveLimits.max_members` members and :attr:`ArchiveLimits.max_bytes`
  bytes in total, counted while decompressing (a member whose data exceeds its declared size is
  refused), so a compression bomb stops at the limit; encrypted zip members are refused;
- exactly one ``.onnx`` member; each external-data location names a regular file of the
  archive, in the model's folder or below it, and its offset and length lie inside that file.

The result is the model with its weights inside (plain ONNX bytes): the chip stores and digests
that, so a chip never depends on the archive's layout. Its size is bounded by protobuf's limit on
one message (:data:`~chipsim.compiler.loader.MAX_MODEL_BYTES`, 2 GiB: ~536M float32 weights), not
by the archive's, so a model too large for one upload file still programs from an archive. Going
over an :class:`ArchiveLimits` bound raises :class:`ArchiveLimitError`, which names the bound.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from chipsim.compiler.loader import MAX_MODEL_BYTES, all_tensors
from chipsim.compiler.plan import CompileError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on an uploaded archive: members (files and folders) and uncompressed bytes."""

    max_members: int = 256
    max_bytes: int = MAX_MODEL_BYTES


class ArchiveLimitError(CompileError):
    """An archive over one of its :class:`ArchiveLimits`; ``limit`` names the field
    (``max_members`` or ``max_bytes``), so a caller can name the setting that sets it."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


def is_archive(data: bytes) -> bool:
    """True for zip, tar and gzip/bz2/xz-compressed data (an ONNX protobuf starts otherwise)."""
    head = bytes(data[:6])
    return (
        head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
        or bytes(data[257:262]) == b"ustar"
    )


def _refuse(name: str, why: str) -> CompileError:
    return CompileError(f"model: archive member {name[:200]!r}: {why}")


def safe_relative_path(name: str) -> PurePosixPath:
    """``name`` as a relative path that cannot leave its folder; raises CompileError otherwise."""
    if not name or "\x00" in name:
        raise _refuse(name, "empty name or NUL character")
    if "\\" in name:
        raise _refuse(name, "backslash in the path (archives use '/')")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and len(path.parts[0]) == 2 and path.parts[0][1] == ":"):
        raise _refuse(name, "absolute path")
    parts = [p for p in path.parts if p != "."]
    if ".." in parts:
        raise _refuse(name, "'..' in the path")
    if not parts:
        raise _refuse(name, "names the archive's root")
    return PurePosixPath(*parts)


@dataclass
class _Member:
    path: PurePosixPath
    is_dir: bool
    size: int  # declared size
    open: object  # () -> readable binary stream (files only)


def _zip_members(data: bytes) -> tuple[zipfile.ZipFile, list[_Member]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if info.flag_bits & 0x1:
            raise _refuse(info.filename, "encrypted")
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(info.filename, "not a regular file or folder (symlink, device or FIFO)")
        is_dir = info.is_dir() or stat.S_ISDIR(mode)
        out.append(_Member(safe_relative_path(info.filename), is_dir, info.file_size, (lambda i=info: zf.open(i))))
    return zf, out


def _tar_members(data: bytes) -> tuple[tarfile.TarFile, list[_Member]]:
    tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    out = []
    for m in tf.getmembers():
        if not (m.isfile() or m.isdir()):
            kind = "symlink" if m.issym() else "hardlink" if m.islnk() else "device or FIFO"
            raise _refuse(m.name, f"a {kind}; only regular files and folders are accepted")
        out.append(_Member(safe_relative_path(m.name), m.isdir(), m.size, (lambda m=m: tf.extractfile(m))))
    return tf, out


def _copy_bounded(src: BinaryIO, dst: BinaryIO, member: _Member, budget: int) -> int:
    """Copy at most the member's declared size (and the remaining budget); returns bytes copied."""
    n = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return n
        n += len(chunk)
        if n > member.size:
            raise _refuse(str(member.path), "holds more data than its header declares")
        if n > budget:
            raise ArchiveLimitError(
                f"model: the archive holds more than its limit of {budget} bytes uncompressed", "max_bytes"
            )
        dst.write(chunk)


def _members(data: bytes) -> tuple[object, list[_Member]]:
    try:
        if bytes(data[:4]) in (b"PK\x03\x04", b"PK\x05\x06"):
            return _zip_members(data)
        return _tar_members(data)
    except CompileError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise CompileError(
            f"model: not a readable .zip or .tar archive ({type(err).__name__}: {str(err)[:200]})"
        ) from None


def extract(data: bytes, folder: Path, limits: ArchiveLimits) -> list[PurePosixPath]:
    """Check every member (see the module docstring), then write the archive's files under
    ``folder``; returns the files' relative paths."""
    archive, members = _members(data)
    if len(members) > limits.max_members:
        raise ArchiveLimitError(
            f"model: the archive has {len(members)} members, more than the limit of {limits.max_members}",
            "max_members",
        )
    seen: set[PurePosixPath] = set()
    for m in members:
        if m.path in seen:
            raise _refuse(str(m.path), "given twice")
        seen.add(m.path)
    declared = sum(m.size for m in members if not m.is_dir)
    if declared > limits.max_bytes:
        raise ArchiveLimitError(
            f"model: the archive declares {declared} bytes uncompressed, more than the limit of {limits.max_bytes}",
            "max_bytes",
        )
    files, budget = [], limits.max_bytes
    try:
        for m in members:
            target = folder.joinpath(*m.path.parts)
            if m.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as dst, m.open() as src:  # type: ignore[operator]
                budget -= _copy_bounded(src, dst, m, budget)
            files.append(m.path)
    except CompileError:
        raise
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as err:
        raise CompileError(f"model: the archive cannot be unpacked ({type(err).__name__}: {str(err)[:200]})") from None
    finally:
        archive.close()  # type: ignore[attr-defined]
    return files


def _external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    return (t for t in all_tensors(model) if t.data_location == TensorProto.EXTERNAL)


def check_external_locations(model: onnx.ModelProto, base: Path, root: Path) -> None:
    """Every external-data location is a relative path to a regular file under ``base`` (the
    model's folder, inside ``root``), with its offset and length inside the file."""
    root_real = os.path.realpath(root)
    for t in _external_tensors(model):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"model: tensor {t.name!r}: external data location {loc[:200]!r}"
        try:
            rel = safe_relative_path(loc)
        except CompileError as err:
            raise CompileError(f"{where} {str(err).split(': ', 2)[-1]}") from None
        path = base.joinpath(*rel.parts)
        real = os.path.realpath(path)
        if os.path.commonpath([real, root_real]) != root_real or os.path.islink(path) or not os.path.isfile(real):
            raise CompileError(f"{where} is not a file of the archive")
        size = os.path.getsize(real)
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", size - int(info.get("offset", 0))))
        except ValueError:
            raise CompileError(f"{where}: offset and length must be integers") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise CompileError(f"{where}: bytes {offset}…{offset + length} lie outside the {size}-byte file")


def model_from_archive(data: bytes, limits: ArchiveLimits = ArchiveLimits()) -> bytes:
    """The ONNX model of an archive, with its external data loaded inside (plain ONNX bytes)."""
    with tempfile.TemporaryDirectory(prefix="agedchip-archive-") as tmp:  # mode 0700
        root = Path(tmp)
        files = extract(data, root, limits)
        models = [f for f in files if f.suffix.lower() == ".onnx"]
        if len(models) != 1:
            raise CompileError(
                f"model: the archive must hold exactly one .onnx file, it holds {len(models)}"
                + (f" ({[str(m) for m in models][:5]})" if models else "")
            )
        path = root.joinpath(*models[0].parts)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf raises several types
            raise CompileError(f"model: {models[0]} is not a valid ONNX protobuf ({type(err).__name__})") from None
        check_external_locations(model, path.parent, root)
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as err:  # onnx's own checks (it also refuses paths leaving the folder)
            raise CompileError(f"model: its external data cannot be read ({str(err)[:200]})") from None
        for t in all_tensors(model):
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
        if (size := model.ByteSize()) > MAX_MODEL_BYTES:
            raise CompileError(
                f"model: {size} bytes with its weights inside, more than protobuf's limit of "
                f"{MAX_MODEL_BYTES} bytes on one ONNX model"
            )
        return model.SerializeToString()
