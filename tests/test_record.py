"""bootagent.record: the plain data classes the agent uses instead of dataclasses."""

from __future__ import annotations

import pytest

from bootagent.record import Factory, Record


class Point(Record, frozen=True):
    x: int
    y: int = 0


class Bag(Record):
    name: str
    items: list = Factory(list)

    def __post_init__(self):
        self.name = self.name.strip()


def test_fields_take_positions_keywords_and_defaults():
    assert Point(1) == Point(x=1, y=0) != Point(1, 2)
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"


def test_a_missing_unknown_or_repeated_argument_is_a_type_error():
    for bad in (lambda: Point(), lambda: Point(1, z=2), lambda: Point(1, x=2), lambda: Point(1, 2, 3)):
        with pytest.raises(TypeError):
            bad()


def test_frozen_records_refuse_assignment_and_hash_by_value():
    point = Point(1, 2)
    with pytest.raises(AttributeError):
        point.x = 3
    assert {Point(1, 2), Point(1, 2)} == {point}
    with pytest.raises(TypeError):
        hash(Bag("a"))


def test_a_factory_default_is_new_for_each_instance_and_post_init_runs():
    first, second = Bag(" a "), Bag("b")
    first.items.append(1)
    assert second.items == [] and first.name == "a"


def test_replace_copies_with_changes_and_keeps_the_original():
    point = Point(1, 2)
    assert point.replace(y=5) == Point(1, 5) and point == Point(1, 2)
