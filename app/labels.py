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


def _selector_tokens(text: str) -> list[tuple[str, str, int]]:
    """``(kind, literal, offset)`` triples as the Lexer scans them: a symbol token (``==``
    and ``!=`` are the only two-character ones), ``in`` / ``notin``, an identifier; then
    ``(_END, "", len(text))``."""
    tokens, i, n = [], 0, len(text)
    while True:
        while i < n and text[i] in _SELECTOR_SPACE:
            i += 1
        if i == n:
            tokens.append((_END, "", n))
            return tokens
        if text[i] in _SELECTOR_SYMBOLS:
            size = 2 if text[i:i + 2] in ("==", "!=") else 1
            tokens.append((text[i:i + size], text[i:i + size], i))
            i += size
            continue
        start = i
        while i < n and text[i] not in _SELECTOR_SPACE and text[i] not in _SELECTOR_SYMBOLS:
            i += 1
        word = text[start:i]
        tokens.append((word if word in _SELECTOR_KEYWORDS else _IDENT, word, start))


def _is_qualified_name(key: str) -> bool:
    """``IsQualifiedName``: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix) or "/" in prefix):
        return False
    return len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def _is_label_value(value: str) -> bool:
    """``IsValidLabelValue``: empty, or a name of at most 63 characters."""
    return value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value) is not None)


_KEY_RULE = "[prefix/]name: a DNS subdomain and '/', then at most 63 letters, digits, '-', '_', '.'"
_VALUE_RULE = "empty, or at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit"


def label_selector_problem(text: str) -> str | None:
    """Why the API server would refuse ``text`` as a ``labelSelector``
    (``labels.Parse``), or None when it takes it. The answer names where parsing stopped
    by its position (``at character 7``, 1-based, or ``at the end``) and never quotes the
    text, so that a settings error line can carry it."""
    tokens = _selector_tokens(text)
    pos = 0

    def take(values: bool = True) -> tuple[str, str, int]:
        """The next token; ``in`` / ``notin`` are identifiers where values go."""
        nonlocal pos
        kind, literal, at = tokens[pos]
        pos += 1
        return (_IDENT if values and kind in _SELECTOR_KEYWORDS else kind), literal, at

    def peek() -> str:
        kind = tokens[pos][0]
        return _IDENT if kind in _SELECTOR_KEYWORDS else kind

    def where(at: int) -> str:
        return "at the end" if at >= len(text) else f"at character {at + 1}"

    def expected(at: int, what: str) -> str:
        return f"{where(at)}: expected {what}"

    while peek() != _END:
        kind, key, at = take()
        exists = kind != "!"
        if not exists:
            kind, key, at = take()
        if kind != _IDENT:
            return expected(at, "a label key")
        if not _is_qualified_name(key):
            return f"the key at character {at + 1} is not a label key ({_KEY_RULE})"
        values: list[tuple[str, int]] = []  # (value, offset)
        if exists and peek() not in (_END, ","):  # not Exists, DoesNotExist: values
            op, _, at = take(values=False)
            if op in ("in", "notin"):
                kind, _, at = take()
                if kind != "(":
                    return expected(at, "'('")
                if peek() == ")":  # "()": one empty value
                    values = [("", tokens[pos][2])]
                elif peek() not in (_IDENT, ","):
                    return expected(tokens[pos][2], "',', ')' or a value")
                else:
                    while True:  # parseIdentifiersList
                        kind, literal, at = take()
                        if kind == _IDENT:
                            values.append((literal, at))
                            if peek() == ")":
                                break
                            if peek() != ",":
                                return expected(tokens[pos][2], "',' or ')'")
                        elif kind == ",":  # empty values ("(,a)", "(a,,b)", "(a,)") are valid
                            if peek() == ")":
                                break
                            if peek() == ",":
                                take()
                        else:
                            return expected(at, "',' or a value")
                take()  # ")"
            elif op in ("=", "==", "!=", ">", "<"):
                if peek() in (_END, ","):
                    values = [("", tokens[pos][2])]
                else:
                    kind, literal, at = take()
                    if kind != _IDENT:
                        return expected(at, "a value")
                    values = [(literal, at)]
                value, at = values[0]
                if op in (">", "<") and not (_INT64.fullmatch(value) and -2**63 <= int(value) < 2**63):
                    return f"the value {where(at)} is not a whole number, which {op!r} needs"
            else:
                return expected(at, "'=', '!=', '==', 'in' or 'notin'")
        for value, at in values:
            if not _is_label_value(value):
                return f"the value at character {at + 1} is not a label value ({_VALUE_RULE})"
        kind, _, at = take()
        if kind == ",":
            if peek() not in (_IDENT, "!"):
                return expected(tokens[pos][2], "a requirement after ','")
        elif kind != _END:
            return expected(at, "',' or the end")
        else:
            break
    return None
