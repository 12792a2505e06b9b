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
    ("a b", "at character 3: expected '='"),
    ("=a", "at character 1: expected a label key"),
    ("a=b=c", "at character 4: expected ',' or the end"),
    ("!a=b", "at character 3: expected ',' or the end"),  # DoesNotExist takes no value
    ("a in a", "at character 6: expected '('"),
    ("a in (a b)", "at character 9: expected ',' or ')'"),
    ("a in (a", "at the end: expected ',' or ')'"),
    ("a notin", "at the end: expected '('"),
    ("a in ((b))", "at character 7: expected ',', ')' or a value"),
    ("a=(b)", "at character 3: expected a value"),
    ("a=b)", "at character 4: expected ',' or the end"),
    ("a!b", "at character 2: expected '='"),
    ("a,", "at the end: expected a requirement after ','"),
    ("a,,b", "at character 3: expected a requirement after ','"),
    (",a", "at character 1: expected a label key"),
    ("a>b", "the value at character 3 is not a whole number, which '>' needs"),
    ("a>", "the value at the end is not a whole number"),
    ("a>99999999999999999999", "the value at character 3 is not a whole number"),  # past int64 (ParseInt)
    ("a<-3", "the value at character 3 is not a label value"),  # an integer, but NewRequirement checks it too
    ("a/b/c", "the key at character 1 is not a label key"),
    ("A.B/c", "the key at character 1 is not a label key"),  # the prefix is a DNS subdomain: lower case
    ("/c", "the key at character 1 is not a label key"),
    ("a/", "the key at character 1 is not a label key"),
    ("-a", "the key at character 1 is not a label key"),
    ("x" * 64, "the key at character 1 is not a label key"),
    ("p" * 254 + "/n", "the key at character 1 is not a label key"),
    ("é=1", "the key at character 1 is not a label key"),
    ("a=-b", "the value at character 3 is not a label value"),
    ("a=traefik:v3", "the value at character 3 is not a label value"),
    ("a=" + "v" * 64, "the value at character 3 is not a label value"),
    ("a in (ok, -no)", "the value at character 11 is not a label value"),
]


@pytest.mark.parametrize("selector", TAKEN)
def test_what_the_api_server_takes_is_taken(selector):
    assert label_selector_problem(selector) is None


@pytest.mark.parametrize(("selector", "why"), REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_what_the_api_server_refuses_is_refused_saying_where(selector, why):
    problem = label_selector_problem(selector)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize(("selector", "why"), REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_the_answer_never_quotes_the_text(selector, why):
    # It goes into a settings error line, which never shows a value (README, Configuration).
    problem = label_selector_problem(selector)
    for token in {part for part in selector.replace("(", " ").replace(")", " ").replace(",", " ").replace("=", " ")
                  .replace(">", " ").replace("<", " ").replace("!", " ").split() if len(part) > 2}:
        assert token not in problem
