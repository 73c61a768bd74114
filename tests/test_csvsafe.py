"""faceq.outputs.csvsafe: cells that would run as spreadsheet formulas are written as text."""

from __future__ import annotations

import csv
import io

import pytest

from faceq.outputs.csvsafe import inert_cell, inert_row, write_csv_row


@pytest.mark.parametrize(
    "value",
    ["=cmd|' /C calc'!A0", '=HYPERLINK("http://evil.example","click")', "+SUM(1+1)", "@cam",
     "-2+3", "-1.5", "\tx", "\r=1", "==", "=", "@"],
)
def test_formula_triggers_get_a_leading_quote(value):
    assert inert_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["cam-1", "ok", "", " =1", "a=b", "photo@2x.jpg", "'already", "1.5", "\n=1"])
def test_other_text_is_unchanged(value):
    assert inert_cell(value) == value


@pytest.mark.parametrize("value", [-0.5, -3, 0, 1.25, None, True])
def test_numbers_faceq_formats_itself_pass_through(value):
    assert inert_cell(value) is value


def test_write_csv_row_neutralises_every_cell_and_round_trips():
    out = io.StringIO()
    writer = csv.writer(out)
    write_csv_row(writer, ["r1", "=HYPERLINK(\"x\")", "+SUM(1+1)", "@cam", -0.25, "a,b\"c"])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == [
        "r1", "'=HYPERLINK(\"x\")", "'+SUM(1+1)", "'@cam", "-0.25", "a,b\"c"]
    assert inert_row(["-x", 2]) == ["'-x", 2]
