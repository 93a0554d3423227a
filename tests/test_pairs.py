"""Stable pair ids and the task-data format."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.pairs import image_ids_of, ordered, pair_id, task_data

ids = st.text(min_size=1, max_size=30).filter(lambda s: "\x1f" not in s)


def test_pair_id_is_sha1_prefix_of_sorted_ids() -> None:
    expected = hashlib.sha1(b"a\x1fb").hexdigest()[:16]
    assert pair_id("a", "b") == pair_id("b", "a") == expected


@given(ids, ids)
def test_pair_id_symmetric_and_stable(a: str, b: str) -> None:
    if a == b:
        return
    assert pair_id(a, b) == pair_id(b, a)
    assert len(pair_id(a, b)) == 16
    assert ordered(a, b) == tuple(sorted((a, b)))


def test_separator_prevents_concatenation_collisions() -> None:
    assert pair_id("a|b", "c") != pair_id("a", "b|c")
    assert pair_id("ab", "c") != pair_id("a", "bc")


@pytest.mark.parametrize(("a", "b", "field"), [("", "b", "image id a"), ("a", None, "image id b"),
                                               ("x", "x", "two different")])
def test_pair_id_rejects_bad_ids(a: object, b: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        pair_id(a, b)  # type: ignore[arg-type]


def test_task_data_format() -> None:
    data = task_data("i1", "i2", "/u1", "/u2", caption_a="red coat", strategy="aas", pool="U_os", reason="r")
    assert data == {"image_a": "/u1", "image_b": "/u2", "id_a": "i1", "id_b": "i2",
                    "pair_id": pair_id("i1", "i2"),
                    "caption_a": "red coat", "caption_b": "", "strategy": "aas", "pool": "U_os",
                    "reason": "r"}


def test_image_ids_fall_back_to_urls() -> None:
    assert image_ids_of({"id_a": "x", "id_b": "y", "image_a": "u", "image_b": "v"}) == ("x", "y")
    assert image_ids_of({"image_a": "http://h/1.jpg", "image_b": "http://h/2.jpg"}) == (
        "http://h/1.jpg", "http://h/2.jpg")
    assert image_ids_of({"id_a": 1, "id_b": 2}) == ("1", "2")


@pytest.mark.parametrize(("data", "needle"), [({}, "id_a or image_a"), ({"image_a": "u"}, "id_b or image_b"),
                                              ({"image_a": "u", "image_b": "u"}, "itself"),
                                              ("nope", "object")])
def test_image_ids_errors(data: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        image_ids_of(data)  # type: ignore[arg-type]
