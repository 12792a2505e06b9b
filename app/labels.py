"""Kubernetes label selectors: the grammar and checks of k8s.io/apimachinery's
pkg/labels/selector.go (``Lexer``, ``Parser``, ``NewRequirement``) and
pkg/util/validation/validation.go (``IsQualifiedName``, ``IsValidLabelValue``). The API
server parses a list's ``labelSelector`` with ``labels.Parse`` and answers 400 to one it
refuses; checking ``TRAEFIK_LABEL_SELECTOR`` the same way at start turns a fetch worker
that would fail every round into one line naming the variable (Prometheus checks its
Kubernetes discovery selectors with ``labels.Parse`` at config load, prometheus#8285).
No Python library parses them. No import beyond ``re``: every process loads the settings."""

from __future__ import annotations

import re

_SELECTOR_SPACE = " \t\r\n"  # isWhitespace
_SELECTOR_SYMBOLS = "=!(),><"  # isSpecialSymbol
_SELECTOR_KEYWORDS = ("in", "notin")  # identifiers where a value is expected
_IDENT = "identifier"
_END = ""
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")  # qualifiedNameFmt, <= 63
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # <= 253
_INT64 = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(v, 10, 64), range checked below


def _selector_tokens(text: str) -> list[tuple[str, str]]:
    """``(kind, literal)`` pairs as the Lexer scans them: a symbol token (``==`` and
    ``!=`` are the only two-character ones), ``in`` / ``notin``, an identifier; then
    ``(_END, "")``."""
    tokens, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in _SELECTOR_SPACE:
            i += 1
        if i == n:
            tokens.append((_END, ""))
            return tokens
        if text[i] in _SELECTOR_SYMBOLS:
            size = 2 if text[i:i + 2] in ("==", "!=") else 1
            tokens.append((text[i:i + size], text[i:i + size]))
            i += size
            continue
        start = i
        while i < n and text[i] not in _SELECTOR_SPACE and text[i] not in _SELECTOR_SYMBOLS:
            i += 1
        word = text[start:i]
        tokens.append((word if word in _SELECTOR_KEYWORDS else _IDENT, word))


def _is_qualified_name(key: str) -> bool:
    """``IsQualifiedName``: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix) or "/" in prefix):
        return False
    return len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def _is_label_value(value: str) -> bool:
    """``IsValidLabelValue``: empty, or a name of at most 63 characters."""
    return value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value) is not None)


def label_selector_problem(text: str) -> str | None:
    """Why the API server would refuse ``text`` as a ``labelSelector``
    (``labels.Parse``), or None when it takes it. The answer quotes the token where
    parsing stopped (at most 80 characters)."""
    tokens = _selector_tokens(text)
    pos = 0

    def take(values: bool = True) -> tuple[str, str]:
        """The next token; ``in`` / ``notin`` are identifiers where values go."""
        nonlocal pos
        kind, literal = tokens[pos]
        pos += 1
        return (_IDENT if values and kind in _SELECTOR_KEYWORDS else kind), literal

    def peek() -> str:
        kind = tokens[pos][0]
        return _IDENT if kind in _SELECTOR_KEYWORDS else kind

    def found(literal: str, expected: str) -> str:
        return f"found {repr(literal[:80]) if literal else 'the end'}, expected {expected}"

    while peek() != _END:
        kind, key = take()
        exists = kind != "!"
        if not exists:
            kind, key = take()
        if kind != _IDENT:
            return found(key, "a label key")
        if not _is_qualified_name(key):
            return f"{key[:80]!r} is not a label key ([prefix/]name, the name at most 63 characters)"
        if not exists or peek() in (_END, ","):  # Exists, DoesNotExist: no values
            values = []
        else:
            op, literal = take(values=False)
            if op in ("in", "notin"):
                kind, literal = take()
                if kind != "(":
                    return found(literal, "'('")
                if peek() == ")":  # "()": one empty value
                    values = [""]
                elif peek() not in (_IDENT, ","):
                    return found(tokens[pos][1], "',', ')' or a value")
                else:
                    values = []
                    while True:  # parseIdentifiersList
                        kind, literal = take()
                        if kind == _IDENT:
                            values.append(literal)
                            if peek() == ")":
                                break
                            if peek() != ",":
                                return found(tokens[pos][1], "',' or ')'")
                        elif kind == ",":  # empty values: "(,a)", "(a,,b)", "(a,)"
                            if not values:
                                values.append("")
                            if peek() == ")":
                                values.append("")
                                break
                            if peek() == ",":
                                take()
                                values.append("")
                        else:
                            return found(literal, "',' or a value")
                take()  # ")"
            elif op in ("=", "==", "!=", ">", "<"):
                if peek() in (_END, ","):
                    values = [""]
                else:
                    kind, literal = take()
                    if kind != _IDENT:
                        return found(literal, "a value")
                    values = [literal]
                if op in (">", "<") and not (_INT64.fullmatch(values[0]) and -2**63 <= int(values[0]) < 2**63):
                    return f"{values[0][:80]!r} is not a whole number, which {op!r} needs"
            else:
                return found(literal, "'=', '!=', '==', 'in' or 'notin'")
        for value in values:
            if not _is_label_value(value):
                return f"{value[:80]!r} is not a label value (at most 63 characters: letters, digits, '-', '_', '.')"
        kind, literal = take()
        if kind == ",":
            if peek() not in (_IDENT, "!"):
                return found(tokens[pos][1], "a requirement after ','")
        elif kind != _END:
            return found(literal, "',' or the end")
        else:
            break
    return None
