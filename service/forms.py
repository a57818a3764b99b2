"""Multipart forms, read once for every route that takes one, and the media types routes accept.

A route declares its fields (:class:`FormFields`); :func:`read_form` walks the parsed form and
returns the text fields and the uploaded files, refusing unknown or repeated fields with an
:class:`~service.problems.InvalidField` naming them. The form object is duck-typed (Starlette's
``FormData``: ``multi_items()``, ``close()``; uploads have ``read()`` and ``filename``), so this
module needs no web framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.problems import InvalidField, UnsupportedMediaType

#: The form encodings routes read: multipart only (a url-encoded form cannot carry the uploads; refused with 415).
FORM_TYPES = ("multipart/form-data",)
#: What JSON routes read; a request without a Content-Type is read as JSON too.
JSON_TYPES = ("application/json", "")


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return content_type.split(";")[0].strip().lower()


def require_form(content_type: str, what: str) -> None:
    """Refuse a body that is not a form; ``what`` says what the form carries."""
    ctype = media_type(content_type)
    if ctype not in FORM_TYPES:
        raise UnsupportedMediaType(
            "content-type", f"content-type: expected multipart/form-data ({what}), got {ctype!r}"
        )


def require_json(content_type: str) -> None:
    """Refuse a body declared as anything but JSON (a missing Content-Type is taken as JSON)."""
    ctype = media_type(content_type)
    if ctype not in JSON_TYPES:
        raise UnsupportedMediaType("content-type", f"content-type: expected application/json, got {ctype!r}")


@dataclass(frozen=True)
class FormFields:
    """The fields a form may hold.

    ``file_hints``: file fields that name what to upload when sent as text instead;
    ``decode(key, text)``: turns a text value into the field's value (raising InvalidField)."""

    text: frozenset[str]
    files: frozenset[str]
    file_hints: Mapping[str, str] = field(default_factory=dict)
    decode: Callable[[str, str], Any] | None = None


@dataclass
class Form:
    fields: dict[str, Any]  # text fields, empty ones left out
    files: dict[str, tuple[bytes, str | None]]  # file field → (content, file name)


async def read_form(form: Any, spec: FormFields) -> Form:
    """The fields of a parsed form; closes it (its uploads' temporary files) in any case."""
    out = Form({}, {})
    seen: set[str] = set()
    try:
        for key, value in form.multi_items():
            if key in seen:
                raise InvalidField(key, f"{key}: given more than once")
            seen.add(key)
            if not isinstance(value, str):  # an upload
                if key not in spec.files:
                    known = (
                        f"the only file field is {next(iter(spec.files))!r}"
                        if len(spec.files) == 1
                        else f"file fields: {sorted(spec.files)}"
                    )
                    raise InvalidField(key, f"{key}: unknown file field; {known}")
                out.files[key] = (await value.read(), value.filename)
                continue
            if key not in spec.text:
                if key in spec.file_hints:
                    raise InvalidField(key, f"{key}: must be a file upload ({spec.file_hints[key]})")
                raise InvalidField(key, f"{key}: unknown field; fields: {sorted(spec.text | spec.files)}")
            if value != "":
                out.fields[key] = spec.decode(key, value) if spec.decode else value
    finally:
        await form.close()
    return out
