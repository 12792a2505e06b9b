"""``app.labels.label_selector_problem``: the label selector grammar and checks of
k8s.io/apimachinery/pkg/labels/selector.go (``Parse``, ``NewRequirement``) and
pkg/util/validation (``IsQualifiedName``, ``IsValidLabelValue``), so that a
TRAEFIK_LABEL_SELECTOR the API server would refuse is refused at start. The cases follow
the grammar's comment in selector.go and its ``TestSelectorParse`` cases."""

from __future__ import annotations

import pytest

from app.labels import label_selector_problem

TAKEN = [
    "app.kubernetes.io/name=traefik",  # the default
    "app.kubernetes.io/name=traefik,app.kubernetes.io/instance=traefik-traefik",
    "a", "!a", "a,b", "!a,b=c",
    "x in (foo,,baz),y,z notin ()",  # the grammar comment's example
    "a==b", "a!=b", "a = b , c != d", " a=b ",
    "a>5", "a<7", "a>0",
    "a=", "a=,b", "a==",  # an empty value is a value
    "a in (a,)", "a in (,)", "a in (,a)", "a in ()", "a in (a, b)",
    "a in (in)", "in=notin", "notin in (in, notin)",  # keywords are identifiers where values go
    "example.com/x in (a)", "x notin (a)", "k8s.io/a-b_c.d=E-f_g.h",
    "a=" + "v" * 63, "x" * 63, "p" * 253 + "/" + "n" * 63,
]

REFUSED = [
    ("a b", "'b', expected '='"),
    ("=a", "'=', expected a label key"),
    ("a=b=c", "'=', expected ',' or the end"),
    ("!a=b", "'=', expected ',' or the end"),  # DoesNotExist takes no value
    ("a in a", "'a', expected '('"),
    ("a in (a b)", "'b', expected ',' or ')'"),
    ("a in (a", "the end, expected ',' or ')'"),
    ("a notin", "the end, expected '('"),
    ("a in ((b))", "'(', expected ',', ')' or a value"),
    ("a=(b)", "'(', expected a value"),
    ("a=b)", "')', expected ',' or the end"),
    ("a!b", "'!', expected '='"),
    ("a,", "the end, expected a requirement after ','"),
    ("a,,b", "',', expected a requirement after ','"),
    (",a", "',', expected a label key"),
    ("a>b", "not a whole number"),
    ("a>", "not a whole number"),
    ("a>99999999999999999999", "not a whole number"),  # past int64 (strconv.ParseInt)
    ("a<-3", "not a label value"),  # an integer, but NewRequirement checks the value too
    ("a/b/c", "not a label key"),
    ("A.B/c", "not a label key"),  # the prefix is a DNS subdomain: lower case
    ("/c", "not a label key"),
    ("a/", "not a label key"),
    ("-a", "not a label key"),
    ("x" * 64, "not a label key"),
    ("p" * 254 + "/n", "not a label key"),
    ("é=1", "not a label key"),
    ("a=-b", "not a label value"),
    ("a=traefik:v3", "not a label value"),
    ("a=" + "v" * 64, "not a label value"),
    ("a in (ok, -no)", "not a label value"),
]


@pytest.mark.parametrize("selector", TAKEN)
def test_what_the_api_server_takes_is_taken(selector):
    assert label_selector_problem(selector) is None


@pytest.mark.parametrize(("selector", "why"), REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_what_the_api_server_refuses_is_refused_saying_where(selector, why):
    problem = label_selector_problem(selector)
    assert problem is not None and why in problem, problem


def test_the_answer_quotes_at_most_80_characters_of_the_input():
    problem = label_selector_problem("a=" + "v" * 5000)
    assert problem is not None and len(problem) < 200
