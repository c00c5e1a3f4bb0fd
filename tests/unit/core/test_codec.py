"""The one codec of the stored documents: a table of fields says what is written, in which order, and what is read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.codec import Codec, Document, Field, refuse


def _word(value: object, source: str) -> str:
    if isinstance(value, str) and value.isalpha():
        return value
    raise refuse("word", source, value)


@dataclass(frozen=True)
class Note:
    title: str
    author: str | None
    tag: str = "plain"

    @property
    def tagged(self) -> bool:
        return self.tag != "plain"


def _tag_agrees(values: Mapping[str, Any], source: str) -> None:
    if values["tagged"] != (values["tag"] != "plain"):
        raise UnsafeError(f"refusing {source}: tagged says otherwise")


WORD = Codec(_word, str.upper)
NOTE = Document(
    "test/note",
    (
        Field("title", Codec(_word)),
        Field("author", WORD, nullable=True),
        Field("tagged", Codec(lambda value, source: bool(value)), derived=True),
        Field("tag", Codec(_word), optional=True, default="plain"),
    ),
    Note,
    _tag_agrees,
)


def test_fields_are_written_in_the_table_order_after_format_and_version() -> None:
    text = NOTE.write(Note("hello", "ann", "x"))
    assert list(json.loads(text)) == ["format", "version", "title", "author", "tagged", "tag"]
    assert json.loads(text)["author"] == "ANN"  # through the field's encoder
    assert text.startswith('{\n "format": "test/note",\n "version": 1,\n')


def test_an_optional_field_at_its_default_is_left_out_and_read_back_as_the_default() -> None:
    text = NOTE.write(Note("hello", None))
    assert "tag" not in json.loads(text) and json.loads(text)["author"] is None
    assert NOTE.read(text, "test") == Note("hello", None)


def test_a_derived_field_is_checked_but_not_passed_to_the_constructor() -> None:
    assert NOTE.read(NOTE.write(Note("a", "b", "c")), "test") == Note("a", "B", "c")
    data = json.loads(NOTE.write(Note("a", "b", "c")))
    with pytest.raises(UnsafeError, match="tagged says otherwise"):
        NOTE.read(json.dumps({**data, "tagged": False}), "test")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tag": None}, "'None' is not a valid word"),  # an optional field, when present, is never null
        ({"title": None}, "'None' is not a valid word"),  # nor is a required one
        ({"author": "a1"}, "'a1' is not a valid word"),
        ({"extra": 1}, r"unknown fields \['extra'\] / missing fields \[\]"),
        ({"title": ...}, r"unknown fields \[\] / missing fields \['title'\]"),
        ({"author": ...}, r"missing fields \['author'\]"),  # nullable is not optional
        ({"format": "test/other"}, "not an test/note document"),
        ({"version": 2}, "version '2' is not 1"),
        ({"version": True}, "version 'True' is not 1"),  # JSON true equals 1 in Python, and is still no version
    ],
)
def test_anything_off_the_table_is_refused(change: dict[str, object], message: str) -> None:
    data = {**json.loads(NOTE.write(Note("hello", "ann"))), **change}
    with pytest.raises(UnsafeError, match=message):
        NOTE.read(json.dumps({k: v for k, v in data.items() if v is not ...}), "test")
