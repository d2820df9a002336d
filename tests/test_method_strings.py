"""Method strings (``graphprune.method_strings``), as ``graphprune sweep --methods`` and ``--method`` take them."""

import pytest

from graphprune import DART, CrossAttentionTrim, FastV, PDrop
from graphprune.method_strings import method_string, parse_method, parse_methods


@pytest.mark.parametrize(
    ("text", "method"),
    [
        ("fastv:k=2,keep=0.5", FastV(k=2, keep=0.5)),
        ("FastV", FastV()),
        (" fastv : k = 3 , keep = 1 , query = mean ", FastV(k=3, keep=1.0, query="mean")),
        ("trim:keep=0.25,select=topk", CrossAttentionTrim(keep=0.25, select="topk")),
        ("cross_attention_trim:keep=0.5", CrossAttentionTrim(keep=0.5)),
        ("CrossAttentionTrim", CrossAttentionTrim()),
        ("dart:k=3,keep=0.25,pivots=2,text_pivots=0", DART(k=3, keep=0.25, pivots=2, text_pivots=0)),
        ("pdrop:layers=8/16/24,keep=0.5", PDrop(layers=(8, 16, 24), keep=0.5)),
        ("PDrop:layers=2,query=mean", PDrop(layers=(2,), query="mean")),
    ],
)
def test_a_method_string_names_its_method(text, method):
    assert parse_method(text) == method
    assert parse_method(method_string(method)) == method


def test_methods_are_separated_by_semicolons():
    assert parse_methods("fastv:keep=0.5; ;fastv:k=1,keep=0.25;") == [FastV(keep=0.5), FastV(k=1, keep=0.25)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("fastw:k=2", "unknown method 'fastw' (methods: fastv, dart, pdrop, crossattentiontrim, trim)"),
        ("pdrop:layers=16/8", "layers must be a non-empty, strictly increasing sequence"),
        ("fastv:k=2,kep=0.5", "graphprune's FastV takes k, keep, query; got also ['kep']"),
        ("fastv:k", "'k' is not OPTION=VALUE"),
        ("fastv:k=", "'k=' is not OPTION=VALUE"),
        ("fastv:k=1,k=2", "'k' is given twice"),
        ("fastv:k=2.5", "k must be an int >= 1"),
        ("fastv:keep=half", "keep must be a fraction in (0, 1]"),
        ("trim:select=all", "select must be one of"),
        ("fastv:name=trim", "'name' is given twice"),
    ],
)
def test_a_bad_method_string_is_a_one_line_error(text, match):
    with pytest.raises(ValueError) as error:
        parse_method(text)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"graphprune: bad method string {text!r}: ") and match in message
    assert "such as 'fastv:k=2,keep=0.5'" in message


def test_no_method_is_an_error():
    with pytest.raises(ValueError, match="graphprune: no method in ' ; '"):
        parse_methods(" ; ")
