"""Strict JSON documents described by a table of their fields: one writer and one reader for every document.

A document is a JSON object with `format` and `version` first, then one key per field, in the table's order (so the
text written is the same on every instance and in every release). Reading refuses anything but exactly that: another
format or version, an unknown or missing key, a value its field's codec does not accept. A field may be
- required (the default): always written, never null;
- nullable: always written, JSON null standing for None;
- optional: written only when its value is not the field's default, and read as the default when absent, so that
  documents stay what agents from before the field read and write (present, it is never null);
- derived: written from a property of the value, read only for the document's cross-field check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError

T = TypeVar("T")
D = TypeVar("D")
FORMAT_VERSION = 1
# Largest document we read back: a few hundred members would still fit; anything bigger is not ours.
MAX_DOCUMENT_BYTES = 256 * 1024


def refuse(what: str, source: str, value: object) -> UnsafeError:
    return UnsafeError(f"refusing {what} from {source}: {validate.shown(value)} is not a valid {what}")


def _as_is(value: object) -> object:
    return value


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How one kind of value is written to JSON, and read back: `decode(value, source)` returns it or raises
    UnsafeError naming `source`."""

    decode: Callable[[object, str], T]
    encode: Callable[[T], object] = _as_is


@dataclass(frozen=True)
class Field:
    """One field of a document: its name (the attribute and the JSON key), its codec, and how it may be absent."""

    name: str
    codec: Codec[Any]
    nullable: bool = False
    optional: bool = False
    default: object = None  # of an optional field
    derived: bool = False

    def write(self, value: object) -> object:
        return None if value is None and self.nullable else self.codec.encode(value)

    def read(self, data: Mapping[str, object], source: str) -> object:
        if self.name not in data:
            return self.default  # only an optional field may be absent (Document.read checks the keys first)
        value = data[self.name]
        return None if value is None and self.nullable else self.codec.decode(value, source)


def _no_check(values: Mapping[str, Any], source: str) -> None:
    """Documents whose fields are valid one by one are valid."""


@dataclass(frozen=True)
class Document(Generic[D]):
    """A kind of document: its `format` name, the fields of its value in the order they are written, the constructor
    of its value (called with every field that is not derived), and a check across fields (raising UnsafeError)."""

    format: str
    fields: tuple[Field, ...]
    build: Callable[..., D]
    check: Callable[[Mapping[str, Any], str], None] = _no_check

    def write(self, value: D) -> str:
        data: dict[str, object] = {"format": self.format, "version": FORMAT_VERSION}
        for field in self.fields:
            item = getattr(value, field.name)
            if not (field.optional and item == field.default):
                data[field.name] = field.write(item)
        return json.dumps(data, indent=1)

    def read(self, text: str | bytes, source: str) -> D:
        data = self._object(text, source)
        unknown = sorted(set(data) - {"format", "version", *(field.name for field in self.fields)})
        missing = sorted({field.name for field in self.fields if not field.optional} - set(data))
        if unknown or missing:
            raise UnsafeError(f"refusing {source}: unknown fields {unknown} / missing fields {missing}")
        values = {field.name: field.read(data, source) for field in self.fields}
        self.check(values, source)
        return self.build(**{field.name: values[field.name] for field in self.fields if not field.derived})

    def _object(self, text: str | bytes, source: str) -> dict[str, Any]:
        if len(text) > MAX_DOCUMENT_BYTES:
            raise UnsafeError(f"refusing {source}: {len(text)} bytes is larger than any {self.format} document")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise UnsafeError(f"refusing {source}: not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != self.format:
            raise UnsafeError(f"refusing {source}: not an {self.format} document")
        version = data.get("version")
        if isinstance(version, bool) or version != FORMAT_VERSION:  # JSON true is not version 1
            raise UnsafeError(
                f"refusing {source}: {self.format} version {validate.shown(version)} is not "
                f"{FORMAT_VERSION} (written by a newer agent? upgrade this one)"
            )
        return data
