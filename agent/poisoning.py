"""Tool-poisoning defence for MCP: pin tool definitions by digest, scan them and tool results for
hidden instructions, strip what a policy says to strip, and diff a changed definition for the
operator who must re-approve it.

Pure functions over the parsed JSON of `tools/list` entries and `tools/call` results: no I/O, no
state. Every pattern is compiled once at import.

What a scan looks for (`FindingKind`):

- INJECTION: instructions aimed at the model ("ignore previous instructions", "do not tell the
  user", "before using this tool", `<IMPORTANT>`/`<system>` pseudo-tags, chat-template tokens).
- INVISIBLE_UNICODE: characters a human reviewer cannot see: format (Cf, which holds zero-width
  characters, bidi overrides and the tag block's letters), private use (Co), controls (Cc) other
  than tab, newline and carriage return, the whole tag block U+E0000-U+E007F, the supplementary
  variation selectors (used to smuggle bytes after an emoji) and the Hangul fillers. A zero-width
  joiner inside an emoji sequence is allowed.
- SENSITIVE_PATH: secrets on the user's machine (`~/.ssh`, `id_rsa`, `.env`, `/etc/passwd`,
  cloud and package-manager credential files, MCP client configs).
- EXFILTRATION: URLs whose query carries a placeholder to fill with data, "send the ... to
  https://", webhook and request-catcher hosts, `curl ... | sh`, uploads and reverse shells.
- BAD_NAME: a tool name outside the MCP naming guidance (1-128 of A-Z a-z 0-9 `_` `-` `.`).

Before the phrase patterns run, a string is normalised: invisible characters removed (so
"ig\\u200bnore previous instructions" still matches, and the invisible character is reported on
its own), NFKC applied (fullwidth and compatibility forms fold to ASCII), and common Cyrillic and
Greek look-alikes of Latin letters folded, every run of whitespace collapsed to one space, and
the text lower-cased. Pure printable ASCII, the common case, skips the Unicode work entirely.

Tool results are scanned with fewer rules than definitions: paths like `.env` and shell one-liners
like `curl ... | sh` appear legitimately in file listings and READMEs a tool returns, so results
are checked for injection, invisible characters and exfiltration URLs only.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "Finding",
    "FindingKind",
    "definition_diff",
    "scan_result",
    "scan_tool",
    "strip_result",
    "tool_digest",
]


class FindingKind(enum.StrEnum):
    """What a scan found; the value is the name used in audit rows and operator views."""

    INJECTION = "injection"
    INVISIBLE_UNICODE = "invisible_unicode"
    SENSITIVE_PATH = "sensitive_path"
    EXFILTRATION = "exfiltration"
    BAD_NAME = "bad_name"


@dataclass(frozen=True, slots=True)
class Finding:
    """One suspicious string in a tool definition or result.

    `where` is a JSON pointer (RFC 6901 escaping) into the scanned object, e.g.
    `/inputSchema/properties/q/description`; for a property name it points at the property
    itself. `rule` names the pattern that matched (e.g. `ignore-instructions`, `zero-width`).
    `excerpt` is a bounded piece of the (normalised) text around the match, with invisible and
    control characters shown as `\\u{...}`, safe to show an operator or write to a log.
    """

    kind: FindingKind
    where: str
    rule: str
    excerpt: str


# -- Tool names ---------------------------------------------------------------------------------

# MCP 2025-11-25 and 2026-07-28, server/tools "Tool Names": 1-128 characters, only ASCII letters,
# digits, `_`, `-` and `.`. (`/` is not in the spec's list, so it is not accepted here.)
_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

# -- Invisible characters -----------------------------------------------------------------------


def _invisible_ranges() -> list[tuple[int, int]]:
    """Code point ranges of the characters reported as invisible, from this Python's Unicode
    database (Cf, Co and Cc only occur below U+20000, in the tag plane and in the private-use
    planes, so only those are walked)."""
    points: list[int] = []
    for cp in (*range(0x20000), *range(0xE0000, 0xE1000)):
        if cp in (0x09, 0x0A, 0x0D):
            continue
        if unicodedata.category(chr(cp)) in ("Cf", "Co", "Cc"):
            points.append(cp)
    points.extend(range(0xE0000, 0xE0080))  # the whole tag block, assigned or not
    points.extend(range(0xE0100, 0xE01F0))  # variation selectors supplement
    points.extend((0x115F, 0x1160, 0x3164, 0xFFA0))  # Hangul fillers: letters that render blank
    ranges: list[tuple[int, int]] = []
    for cp in sorted(set(points)):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    # Planes 15 and 16 are all private use; add them whole rather than walk 131 072 code points.
    ranges.extend(((0xF0000, 0xFFFFD), (0x100000, 0x10FFFD)))
    return ranges


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


# A class holding code points above U+FFFF compiles to a list of ranges tried one by one (1 ms
# per 64 KB); the BMP part alone compiles to a bitmap (0.2 ms). So the two are apart, and the
# astral one only runs on text that has an astral character at all.
_INVISIBLE_BMP: Final = re.compile(
    f"[{_char_class([r for r in _invisible_ranges() if r[1] <= 0xFFFF])}]"
)
_INVISIBLE_ASTRAL: Final = re.compile(
    f"[{_char_class([r for r in _invisible_ranges() if r[0] > 0xFFFF])}]"
)
_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")
_ASCII_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ZWJ: Final = "\u200d"
_VS16: Final = "\ufe0f"


def _emoji_part(ch: str) -> bool:
    """Whether `ch` can stand next to a zero-width joiner inside an emoji sequence: a symbol
    (So, most emoji), a skin-tone modifier (Sk) or the emoji presentation selector."""
    return ch == _VS16 or unicodedata.category(ch) in ("So", "Sk")


def _is_invisible(ch: str) -> bool:
    return (_INVISIBLE_BMP if ch <= "\uffff" else _INVISIBLE_ASTRAL).match(ch) is not None


def _first_invisible(text: str) -> re.Match[str] | None:
    """The first invisible character in non-ASCII `text` that is not a joiner inside an emoji
    sequence."""
    first: re.Match[str] | None = None
    for match in _INVISIBLE_BMP.finditer(text):
        i = match.start()
        if not (
            match.group() == _ZWJ
            and 0 < i < len(text) - 1
            and _emoji_part(text[i - 1])
            and _emoji_part(text[i + 1])
        ):
            first = match
            break
    if _ASTRAL.search(text) is not None:
        astral = _INVISIBLE_ASTRAL.search(text, 0, len(text) if first is None else first.start())
        if astral is not None:
            first = astral
    return first


# Look-alikes from Cyrillic and Greek that NFKC leaves alone, folded to Latin so "ignore" spelt
# with a Cyrillic i and o still reads "ignore".
_CONFUSABLES_FROM: Final = "аеорсухіјѕԁһӏԛԝАВЕКМНОРСТХІЈЅαεικνορτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"
_CONFUSABLES: Final = str.maketrans(
    _CONFUSABLES_FROM,
    "aeopcyxijsdhlqwABEKMHOPCTXIJSaeiknoptuxABEZHIKMNOPTYX",
)
_CONFUSABLE: Final = re.compile(f"[{_CONFUSABLES_FROM}]")

# -- Rules --------------------------------------------------------------------------------------
# CPython's `re` has no multi-pattern search: an alternation of twenty phrases costs about 0.3 µs
# per character of text (20 ms for 64 KB), paid on every tools/call. So each rule names anchors:
# literal pieces every match of it contains, found with `str.find` (a fast C search), and the
# rule's regex only runs at or around an anchor. With `back` 0 the anchor starts every match
# and the regex is matched right there; otherwise `back` bounds how far before the anchor a match
# can start and `span` how far after it it can end (bounded because whitespace is collapsed
# first). One phrase per kind and string is enough, so a kind stops being looked for once found.


@dataclass(frozen=True, slots=True)
class _Rule:
    """One pattern of one kind and the lower-case literals (anchors) that gate it; anchors must
    be found in every match, within `back` characters of its start."""

    kind: FindingKind
    name: str
    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    back: int = 0
    span: int = 256
    # URL rules end their window at the URL's end (the next space) instead of after `span`.
    to_space: bool = False


def _rule(
    kind: FindingKind,
    name: str,
    anchors: tuple[str, ...],
    pattern: str,
    *,
    back: int = 0,
    span: int = 256,
    to_space: bool = False,
) -> _Rule:
    return _Rule(kind, name, anchors, re.compile(pattern, re.I), back, span, to_space)


_I = FindingKind.INJECTION
_P = FindingKind.SENSITIVE_PATH
_X = FindingKind.EXFILTRATION

_INJECTION_RULES: Final = (
    _rule(
        _I,
        "ignore-instructions",
        ("ignore", "disregard", "forget", "override", "bypass"),
        r"\b(?:ignore|disregard|forget|override|bypass) "
        r"(?:(?:all|any|the|your|of|my|these|those) )*"
        r"(?:previous|prior|above|earlier|preceding|former|system|original|existing|other) "
        r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|commands)\b",
    ),
    _rule(
        _I,
        "supersede-instructions",
        ("instruction",),
        r"\b(?:these|this|the following|new) instructions? "
        r"(?:override|overrides|supersedes?|takes? precedence)\b",
        back=16,
        span=24,
    ),
    _rule(
        _I,
        "hide-from-user",
        ("user",),
        r"\b(?:do not|don['\u2019]?t|never) (?:tell|inform|mention|notify|alert|warn|let)\b"
        r"[^.!?\n]{0,40}?\buser\b",
        back=64,
        span=0,
    ),
    _rule(
        _I,
        "hide-from-user",
        ("hide", "conceal", "keep"),
        r"\b(?:hide|conceal) (?:this|it|these|that|them) from the user\b"
        r"|\bkeep (?:this|it|these|that) (?:secret|hidden|private) from\b",
    ),
    _rule(
        _I,
        "user-must-not-know",
        ("user",),
        r"\bthe user (?:must|should|need|may) not "
        r"(?:know|see|notice|find out|be (?:told|informed|aware|shown))\b",
        back=4,
        span=40,
    ),
    _rule(
        _I,
        "before-using-tool",
        ("before",),
        r"\bbefore (?:using|calling|invoking|running|executing) "
        r"(?:this|the|any|any other) tools?\b",
    ),
    _rule(
        _I,
        "when-tool-available",
        ("this tool",),
        r"\b(?:when|while|if) this tool is (?:available|present|installed|loaded|enabled)\b",
        back=6,
        span=16,
    ),
    _rule(
        _I,
        "must-first",
        ("you ",),
        # Not "should always pass/call ...": ordinary usage advice says that.
        r"\byou (?:must|need to|have to) (?:first|always|also first) "
        r"(?:read|open|cat|access|send|upload|copy)\b",
    ),
    _rule(
        _I,
        "new-instructions",
        ("instruction",),
        r"\b(?:new|updated|real|true|actual|hidden|secret) (?:system )?instructions? ?:",
        back=16,
        span=3,
    ),
    _rule(
        _I,
        "role-override",
        ("you are now",),
        r"\byou are now (?:in )?(?:an? )?"
        r"(?:developer|admin|administrator|god|unrestricted|jailbroken|dan)\b",
    ),
    _rule(
        _I,
        "system-prompt-leak",
        ("system prompt", "initial instructions", "hidden instructions"),
        r"\b(?:reveal|print|output|repeat|leak|disclose|send) (?:\w{1,20} ){0,2}"
        r"(?:system prompt|initial instructions|hidden instructions)\b",
        back=56,
        span=0,
    ),
    _rule(
        _I,
        "pseudo-tag",
        ("<",),
        r"< ?/? ?(?:important|system|system[-_ ]?prompt|instructions?|secret|hidden|admin|sudo|"
        r"override|critical|assistant) ?>",
    ),
    _rule(
        _I,
        "chat-template",
        ("<|", "[inst", "[/inst", "<<"),
        r"<\|(?:im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id)\|>"
        r"|\[/?inst\]|<< ?/?sys ?>>",
    ),
)

_SENSITIVE_PATH_RULES: Final = (
    _rule(_P, "ssh-dir", (".ssh",), r"(?<![\w-])\.ssh\b"),
    _rule(
        _P,
        "ssh-key",
        ("id_", "authorized_keys"),
        r"\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\bauthorized_keys\b",
    ),
    _rule(_P, "dotenv", (".env",), r"(?<![\w.$-])\.env(?:\.[\w-]+)?\b(?!-)"),
    _rule(_P, "etc-secrets", ("/etc/",), r"/etc/(?:passwd|shadow|gshadow|sudoers)\b"),
    _rule(
        _P,
        "cloud-credentials",
        (".aws", ".config", ".azure", ".kube", ".docker"),
        r"\.aws[/\\](?:credentials|config)\b|\.config[/\\]gcloud\b|\.azure[/\\]"
        r"|\.kube[/\\]config\b|\.docker[/\\]config\.json\b",
    ),
    _rule(
        _P,
        "credential-file",
        (
            "credentials.json",
            ".git-credentials",
            ".netrc",
            ".npmrc",
            ".pypirc",
            ".pgpass",
            ".gnupg",
        ),
        r"credentials\.json\b|(?<![\w-])\.(?:git-credentials|netrc|npmrc|pypirc|pgpass|gnupg)\b",
    ),
    _rule(
        _P,
        "mcp-client-config",
        (".cursor", "claude_desktop_config", ".vscode"),
        r"\.cursor[/\\]mcp\.json\b|\bclaude_desktop_config\.json\b|\.vscode[/\\]mcp\.json\b",
    ),
)

# Placeholders a model is asked to fill with data: {x}, {{x}}, ${x}, $X, <x>, %s, [X].
_PLACEHOLDER: Final = (
    r"(?:\{\{?[^{}\s]{1,60}\}\}?|\$\{?[A-Za-z_]\w*\}?|<[^<>\s]{1,60}>|%s|\[[\w ]{1,40}\])"
)

_EXFILTRATION_URL_RULES: Final = (
    _rule(
        _X,
        "url-placeholder",
        ("://",),
        r"\b(?:https?|wss?|ftp)://[^\s\"'<>]*?[?&][\w.\-\[\]]+=" + _PLACEHOLDER,
        back=5,
        span=64,
        to_space=True,
    ),
    _rule(
        _X,
        "send-data-to-url",
        ("://",),
        r"\b(?:send|post|upload|forward|transmit|exfiltrate|leak|beacon)(?:s|ed|ing)?\b"
        r"[^.!?\n]{0,60}?"
        r"\b(?:contents?|data|conversation|chat|history|messages?|keys?|tokens?|secrets?|"
        r"credentials?|passwords?|files?|results?|output|everything|it|them|this)\b"
        r"[^.!?\n]{0,40}?\bto (?:https?|wss?|ftp)://",
        back=140,
        span=3,
    ),
    _rule(
        _X,
        "webhook-host",
        (
            "hooks.slack.com",
            "discord",
            "webhook.site",
            "requestbin.",
            ".pipedream.net",
            "ngrok",
            "burpcollaborator.net",
            "oast",
            "interact.sh",
            "beeceptor.com",
        ),
        r"\bhooks\.slack\.com/(?:services|workflows)/"
        r"|\bdiscord(?:app)?\.com/api/webhooks/|\bwebhook\.site\b"
        r"|\brequestbin\.(?:com|net)\b|\.pipedream\.net\b"
        r"|\bngrok(?:-free)?\.(?:io|app|dev)\b|\bburpcollaborator\.net\b"
        r"|\boast(?:ify)?\.(?:fun|live|me|pro|site|online)\b|\binteract\.sh\b|\bbeeceptor\.com\b",
    ),
)
_EXFILTRATION_SHELL_RULES: Final = (
    _rule(
        _X,
        "pipe-to-shell",
        ("curl", "wget", "iwr", "invoke-webrequest"),
        r"\b(?:curl|wget|iwr|invoke-webrequest)\b[^|\n]{0,200}\| ?(?:sudo )?"
        r"(?:(?:ba|z|da|k|fi)?sh|python3?|perl|ruby|node|iex)\b",
    ),
    _rule(
        _X,
        "upload-file",
        ("curl", "wget"),
        r"\bcurl\b[^|\n]{0,200}? (?:-d|--data(?:-binary|-raw|-urlencode)?|-F|--form)[ =]+"
        r"['\"]?(?:[\w.\-]+=)?@|\bcurl\b[^|\n]{0,200}? (?:-T|--upload-file) "
        r"|\bwget\b[^|\n]{0,200}? --post-file\b",
    ),
    _rule(
        _X,
        "reverse-shell",
        ("/dev/tcp/", "nc ", "ncat", "bash"),
        r"/dev/tcp/|\bnc(?:at)? (?:-\w+ )*-e |\bbash -i ?>&",
    ),
)


@dataclass(frozen=True, slots=True)
class _RuleSet:
    """Rules grouped by anchor, so each anchor is searched for once per text."""

    by_anchor: tuple[tuple[str, tuple[_Rule, ...]], ...]

    @classmethod
    def of(cls, *rules: _Rule) -> _RuleSet:
        by_anchor: dict[str, list[_Rule]] = {}
        for rule in rules:
            for anchor in rule.anchors:
                by_anchor.setdefault(anchor, []).append(rule)
        return cls(tuple((a, tuple(r)) for a, r in by_anchor.items()))


_DEFINITION_RULES: Final = _RuleSet.of(
    *_INJECTION_RULES,
    *_SENSITIVE_PATH_RULES,
    *_EXFILTRATION_URL_RULES,
    *_EXFILTRATION_SHELL_RULES,
)
_RESULT_RULES: Final = _RuleSet.of(*_INJECTION_RULES, *_EXFILTRATION_URL_RULES)

# -- Excerpts -----------------------------------------------------------------------------------

_EXCERPT_CONTEXT: Final = 24
_EXCERPT_MAX: Final = 120


def _escape(text: str) -> str:
    """`text` with every character a reader cannot see (or that could restyle a terminal) shown
    as `\\u{hex}`."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() and not _is_invisible(ch) else f"\\u{{{ord(ch):x}}}" for ch in text
    )


def _excerpt(text: str, start: int, end: int) -> str:
    """The match `text[start:end]` with a little context, bounded and escaped."""
    lo = max(0, start - _EXCERPT_CONTEXT)
    hi = min(len(text), end + _EXCERPT_CONTEXT, lo + _EXCERPT_MAX)
    piece = _escape(text[lo:hi])
    if len(piece) > _EXCERPT_MAX:
        piece = piece[:_EXCERPT_MAX]
    return ("…" if lo else "") + piece + ("…" if hi < len(text) else "")


# -- Scanning -----------------------------------------------------------------------------------


def _pointer(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}/{key}"
    return f"{parent}/{key.replace('~', '~0').replace('/', '~1')}"


def _unpointer(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]


# The pieces of one scan are joined with NUL, which normalisation has removed from every piece
# and which is not whitespace, so it survives the collapsing and marks where each piece starts.
_SEPARATOR: Final = "\x00"
# How far past its nominal end a window may reach to finish the word it cut, and how long a URL
# may run before its window is cut anyway.
_WORD_SLACK: Final = 64
_URL_MAX: Final = 4096


def _normalise(text: str, hidden: bool) -> str:
    """`text` without invisible characters (if it has any: `hidden`), in NFKC, with look-alike
    letters folded to Latin."""
    if text.isascii():
        return _ASCII_CONTROL.sub("", text) if hidden else text
    if hidden:
        text = _INVISIBLE_BMP.sub("", text)
        if _ASTRAL.search(text) is not None:
            text = _INVISIBLE_ASTRAL.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    # str.translate with a dict costs 50 ns a character: only when there is a look-alike.
    return text.translate(_CONFUSABLES) if _CONFUSABLE.search(text) is not None else text


def _scan_texts(pieces: list[tuple[str, str]], rules: _RuleSet) -> list[Finding]:
    """The findings in `pieces` ((pointer, string) pairs): at most one per kind and piece (the
    first a rule reports), which is what a block or strip decision needs and bounds the output
    for adversarial input. All pieces are normalised and searched as one text, so a tool's two
    hundred short schema strings cost one pass per anchor, not two hundred."""
    out: list[tuple[int, int, Finding]] = []
    texts = [text for _, text in pieces]
    probe = "\n".join(texts)
    if probe.isascii() and _ASCII_CONTROL.search(probe) is None:
        normal = texts
    else:
        normal = []
        for i, (where, text) in enumerate(pieces):
            hidden = _ASCII_CONTROL.search(text) if text.isascii() else _first_invisible(text)
            if hidden is not None:
                excerpt = _excerpt(text, hidden.start(), hidden.end())
                finding = Finding(
                    FindingKind.INVISIBLE_UNICODE, where, _invisible_rule(hidden.group()), excerpt
                )
                out.append((i, 0, finding))
            normal.append(_normalise(text, hidden is not None))
    joined = " ".join(_SEPARATOR.join(normal).split())
    lowered = joined.lower()
    # Lower-casing can lengthen a few non-ASCII letters; excerpts then come from the lowered text.
    shown = joined if len(lowered) == len(joined) else lowered
    bounds: list[tuple[int, int]] = []
    start = 0
    while (end := lowered.find(_SEPARATOR, start)) >= 0:
        bounds.append((start, end))
        start = end + 1
    bounds.append((start, len(lowered)))
    ends = [end for _, end in bounds]
    done: set[tuple[FindingKind, int]] = set()
    for anchor, anchored in rules.by_anchor:
        at = lowered.find(anchor)
        while at >= 0:
            i = bisect.bisect_left(ends, at)
            first, last = bounds[i]
            for rule in anchored:
                if (rule.kind, i) in done:
                    continue
                if rule.back == 0:
                    # The anchor starts every match of the rule: one match() at the anchor.
                    match = rule.pattern.match(lowered, at, last)
                else:
                    match = rule.pattern.search(
                        lowered, *_window(rule, lowered, at, anchor, first, last)
                    )
                if match is not None:
                    done.add((rule.kind, i))
                    excerpt = _excerpt(
                        shown[first:last], match.start() - first, match.end() - first
                    )
                    finding = Finding(rule.kind, pieces[i][0], rule.name, excerpt)
                    out.append((i, _KIND_ORDER[rule.kind], finding))
            at = lowered.find(anchor, at + 1)
    out.sort(key=lambda entry: (entry[0], entry[1]))
    return [finding for _, _, finding in out]


_KIND_ORDER: Final = {kind: order for order, kind in enumerate(FindingKind)}


def _window(
    rule: _Rule, lowered: str, at: int, anchor: str, first: int, last: int
) -> tuple[int, int]:
    """Where a rule whose matches may start before its anchor is searched: from `back` before
    the anchor to `span` after it, the end moved on to finish a word it cut (a window ending in
    the middle of "username" must not match `user\\b`), all inside the piece."""
    lo = max(first, at - rule.back)
    if rule.to_space:
        space = lowered.find(" ", at, min(last, at + _URL_MAX))
        return lo, min(last, (at + _URL_MAX if space < 0 else space) + rule.span)
    hi = at + len(anchor) + rule.span
    space = lowered.find(" ", hi, min(last, hi + _WORD_SLACK))
    return lo, min(last, hi + _WORD_SLACK if space < 0 else space)


def _invisible_rule(ch: str) -> str:
    cp = ord(ch)
    if 0xE0000 <= cp <= 0xE007F:
        return "tag-character"
    if 0x202A <= cp <= 0x202E or 0x2066 <= cp <= 0x2069 or cp in (0x200E, 0x200F, 0x061C):
        return "bidi-control"
    if cp in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x180E):
        return "zero-width"
    if 0xE0100 <= cp <= 0xE01EF:
        return "variation-selector"
    category = unicodedata.category(ch)
    if category == "Co":
        return "private-use"
    if category == "Cc":
        return "control"
    return "format" if category == "Cf" else "blank-letter"


def _walk(value: Any, where: str, keys: bool) -> Iterator[tuple[str, str]]:
    """Every string under `value` as (pointer, string), in document order; with `keys`, object
    keys too (pointing at their member). Iterative: a schema nested a thousand deep must not
    raise RecursionError."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, str):
            yield here, node
        elif isinstance(node, Mapping):
            children = []
            for key, child in node.items():
                at = _pointer(here, str(key))
                if keys:
                    yield at, str(key)
                children.append((at, child))
            stack.extend(reversed(children))
        elif isinstance(node, list | tuple):
            stack.extend(reversed([(_pointer(here, i), c) for i, c in enumerate(node)]))


# Top-level members of a tool that are not scanned: `_meta` is protocol metadata for clients, not
# text for the model; `icons` are image URLs or data URIs (large base64 the model never reads).
_UNSCANNED_TOOL_MEMBERS: Final = frozenset({"_meta", "icons"})


def scan_tool(tool: Mapping[str, Any]) -> tuple[Finding, ...]:
    """Scan one `tools/list` entry: its name against the MCP naming guidance, and every string
    in every member but `_meta` and `icons` (name, title, description, and inside inputSchema,
    outputSchema, annotations and any other member: descriptions, titles, enum values,
    defaults, examples, property names) for every `FindingKind`. Empty means clean."""
    out: list[Finding] = []
    name = tool.get("name")
    if not isinstance(name, str) or _TOOL_NAME.fullmatch(name) is None:
        shown = name if isinstance(name, str) else repr(name)
        out.append(
            Finding(FindingKind.BAD_NAME, "/name", "tool-name", _excerpt(shown, 0, len(shown)))
        )
    pieces: list[tuple[str, str]] = []
    for member, value in tool.items():
        if member in _UNSCANNED_TOOL_MEMBERS:
            continue
        pieces.extend(_walk(value, _pointer("", member), keys=True))
    out.extend(_scan_texts(pieces, _DEFINITION_RULES))
    return tuple(out)


def _is_input_required(result: Mapping[str, Any]) -> bool:
    # MCP 2026-07-28 basic/patterns/mrtr: an InputRequiredResult carries the server's opaque
    # requestState and its inputRequests, which the client must echo back untouched.
    return result.get("resultType") == "input_required"


def _result_strings(result: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The strings of a `tools/call` result that reach the model: text items, embedded text
    resources, a resource link's title and description, and every string value (not key) of
    structuredContent."""
    content = result.get("content")
    if isinstance(content, list):
        for i, item in enumerate(content):
            if not isinstance(item, Mapping):
                continue
            at = _pointer("/content", i)
            kind = item.get("type")
            if kind == "text" and isinstance(item.get("text"), str):
                yield f"{at}/text", item["text"]
            elif kind == "resource":
                resource = item.get("resource")
                if isinstance(resource, Mapping) and isinstance(resource.get("text"), str):
                    yield f"{at}/resource/text", resource["text"]
            elif kind == "resource_link":
                for member in ("title", "description"):
                    if isinstance(item.get(member), str):
                        yield f"{at}/{member}", item[member]
    if "structuredContent" in result:
        yield from _walk(result["structuredContent"], "/structuredContent", keys=False)


def scan_result(result: Mapping[str, Any]) -> tuple[Finding, ...]:
    """Scan a `tools/call` result for INJECTION, EXFILTRATION and INVISIBLE_UNICODE in the
    strings that reach the model (see `_result_strings`); images, audio and blobs are not read.
    A 2026-07-28 `input_required` result is not scanned at all."""
    if _is_input_required(result):
        return ()
    return tuple(_scan_texts(list(_result_strings(result)), _RESULT_RULES))


_MARKERS: Final = {
    FindingKind.INJECTION: "[removed by Gatez: possible prompt injection]",
    FindingKind.EXFILTRATION: "[removed by Gatez: possible data exfiltration]",
    FindingKind.INVISIBLE_UNICODE: "[removed by Gatez: hidden characters]",
    FindingKind.SENSITIVE_PATH: "[removed by Gatez: sensitive path]",
    FindingKind.BAD_NAME: "[removed by Gatez]",
}
# Members strip_result never writes into, whatever a finding points at.
_UNTOUCHABLE: Final = frozenset({"requestState", "inputRequests", "resultType", "_meta"})


def strip_result(result: Mapping[str, Any], findings: tuple[Finding, ...]) -> dict[str, Any]:
    """A copy of `result` in which each string a finding points at is replaced by a short marker
    saying why. Pass the findings of `scan_result` on the same result, filtered by policy (e.g.
    only INJECTION). Only text items, embedded resource text, resource link title/description
    and structuredContent strings are ever replaced; `requestState`, `inputRequests`,
    `resultType` and `_meta` never, and an `input_required` result is returned as is (copied).

    Containers on the way to a replaced string are copied; everything else is shared with
    `result`, which is left unchanged. A marker may not satisfy the tool's outputSchema
    (an enum or pattern): stripping trades schema validity for safety.
    """
    copy = dict(result)
    if _is_input_required(result) or not findings:
        return copy
    replacements: dict[str, str] = {}
    allowed = {where for where, _ in _result_strings(result)}
    for finding in findings:
        if finding.where in allowed and finding.where not in replacements:
            replacements[finding.where] = _MARKERS[finding.kind]
    for where, marker in replacements.items():
        parts = _unpointer(where)
        if parts[0] in _UNTOUCHABLE:
            continue
        _replace(copy, parts, marker)
    return copy


def _replace(root: dict[str, Any], parts: list[str], marker: str) -> None:
    """Set the string at `parts` under `root` to `marker`, copying each container on the way
    (`root` itself is already a copy). The path is known to exist: it came from
    `_result_strings` on the same result."""
    node: Any = root
    for part in parts[:-1]:
        key: str | int = int(part) if isinstance(node, list) else part
        child = node[key]
        child = list(child) if isinstance(child, list | tuple) else dict(child)
        node[key] = child
        node = child
    last = parts[-1]
    node[int(last) if isinstance(node, list) else last] = marker


# -- Pinning ------------------------------------------------------------------------------------


def _pinned_view(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a tool definition that is pinned: every member but `_meta` (servers put
    request-independent but volatile data there, e.g. timestamps, and it does not reach the
    model) and members whose value is null (SDKs differ on writing an unset optional member as
    null or leaving it out). Unknown members stay in: a future spec member may well reach the
    model, and a gateway cannot tell which ones do."""
    return {k: v for k, v in tool.items() if k != "_meta" and v is not None}


def tool_digest(tool: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a tool definition's canonical form: the pinned view (see `_pinned_view`)
    as JSON with sorted keys and no whitespace, so key order and formatting on the wire do not
    matter while any changed string, number, enum value, default or annotation does. Strings are
    not Unicode-normalised: an added invisible character is a change.

    Raises ValueError for a definition orjson cannot serialise, above all one nested deeper
    than its limit of 254 levels (orjson parses up to 1024): the caller refuses such a tool.
    """
    try:
        canonical = orjson.dumps(_pinned_view(tool), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"tool definition cannot be pinned: {exc}") from exc
    return hashlib.sha256(canonical).hexdigest()


_DIFF_VALUE_MAX: Final = 200


def _leaves(value: Any, where: str) -> dict[str, Any]:
    """Flatten `value` to {pointer: scalar}; an empty object or array is a leaf of its own so a
    member emptied out still shows."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, Mapping) and node:
            stack.extend((_pointer(here, str(k)), v) for k, v in node.items())
        elif isinstance(node, list | tuple) and node:
            stack.extend((_pointer(here, i), v) for i, v in enumerate(node))
        elif isinstance(node, Mapping):
            out[here] = {}
        elif isinstance(node, list | tuple):
            out[here] = []
        else:
            out[here] = node
    return out


def _shown(value: Any) -> Any:
    """A diff value for an operator: strings escaped (an added zero-width space must be visible)
    and clipped."""
    if not isinstance(value, str):
        return value
    text = _escape(value)
    return text if len(text) <= _DIFF_VALUE_MAX else text[:_DIFF_VALUE_MAX] + "…"


def _path_order(path: str) -> tuple[tuple[int, int, str], ...]:
    # Array indices in numeric order: /enum/2 before /enum/10.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("/"))


def definition_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What changed between two definitions of a tool, for the operator who re-approves it: one
    entry per changed leaf, `{"path", "op", "old", "new"}` with `op` one of `changed`, `added`,
    `removed` (the missing side is None), sorted by path. It compares the pinned views (see
    `tool_digest`), so the diff is empty when the digests agree. Strings are shown with
    invisible characters escaped and clipped to 200 characters."""
    before = _leaves(_pinned_view(old), "")
    after = _leaves(_pinned_view(new), "")
    diff: list[dict[str, Any]] = []
    for path in sorted(before.keys() | after.keys(), key=_path_order):
        if path not in after:
            diff.append({"path": path, "op": "removed", "old": _shown(before[path]), "new": None})
        elif path not in before:
            diff.append({"path": path, "op": "added", "old": None, "new": _shown(after[path])})
        elif type(before[path]) is not type(after[path]) or before[path] != after[path]:
            diff.append(
                {
                    "path": path,
                    "op": "changed",
                    "old": _shown(before[path]),
                    "new": _shown(after[path]),
                }
            )
    return diff
