"""Rules on the arguments of an MCP `tools/call`: per-argument constraints, network destinations
and file paths found anywhere in the arguments, and their size.

Pure: no network or file I/O. The policy compiler builds these frozen objects once when a
snapshot arrives (`build_constraint`, `build_destination_policy`, `build_path_policy` validate
plain values and raise `ValueError` naming the fault); the MCP stages evaluate them per call.
Every check returns the first `Violation` or None. A violation's reason is public: it names the
argument and the kind of value and rule, never the value itself.

What the checks cannot see (and why):

- **No DNS resolution.** The gateway cannot know what the tool server's resolver will answer,
  nor when (DNS rebinding: a name that resolves to a public address here may resolve to
  169.254.169.254 there a second later). So names are judged by name (`localhost`,
  `*.internal`, ...) and literals by address. A public name that points at a private address
  (`127.0.0.1.nip.io` style services aside, which embed a denied literal and are caught) is
  allowed; the tool server's own egress must be locked down for that.
- **No symlinks.** A path is normalised lexically; a symlink inside an allowed root that points
  out of it cannot be seen from the gateway. The tool server must not follow links out of its
  roots (e.g. open with `O_NOFOLLOW`/`openat2(RESOLVE_BENEATH)`, or chroot/container mounts).
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import unquote, unquote_to_bytes

import orjson

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_PATTERN_LENGTH: Final = 1000
# How far the destination and path checks walk into the arguments. Beyond either bound the call
# is refused (fail closed) rather than partly inspected.
MAX_DEPTH: Final = 32
MAX_STRINGS: Final = 10_000
# Longest argument name a violation carries (names come from the client).
_NAME_LIMIT: Final = 64


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a call's arguments are refused: the top-level argument and a short public reason
    (the kind of value and the rule broken; never the value)."""

    argument: str
    reason: str


def json_size(value: Any) -> int:
    """The size of `value` serialised as JSON (orjson, compact), in bytes."""
    return len(orjson.dumps(value))


# --------------------------------------------------------------------------------------------
# Argument constraints

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class ArgumentConstraint:
    """JSON-Schema-like checks on one named argument of a tool.

    - `allowed_values`: the value's JSON text must be one of these (strings as they are,
      numbers, `true`/`false` and `null` as JSON writes them; numbers also compare by value, so
      `1.50` allows `1.5`). Arrays and objects never match.
    - `pattern`: a full match on a string, or on a number's JSON text; other kinds fail.
    - `max_length`: characters of a string, items of an array, serialised bytes of an object.
    - `minimum`/`maximum`: inclusive bounds; the value must then be a (finite) number.
    - `required`: the argument must be present (`null` counts as present).

    The pattern is the operator's: Python's `re` backtracks, so a pathological pattern is slow
    on long input; bound such arguments with `max_length` too (checked before the pattern).
    """

    allowed_values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    # Numeric entries of allowed_values, by value.
    _allowed_numbers: frozenset[float] = field(
        init=False, repr=False, compare=False, default=frozenset()
    )

    def __post_init__(self) -> None:
        if self.pattern is not None and len(self.pattern.pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"pattern is longer than {MAX_PATTERN_LENGTH} characters")
        if self.max_length is not None and self.max_length < 0:
            raise ValueError("max_length must not be negative")
        for name, bound in (("minimum", self.minimum), ("maximum", self.maximum)):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{name} must be a finite number")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is greater than maximum")
        numbers = set()
        for text in self.allowed_values:
            if _JSON_NUMBER.fullmatch(text):
                number = float(text)
                if math.isfinite(number):
                    numbers.add(number)
        object.__setattr__(self, "_allowed_numbers", frozenset(numbers))


def build_constraint(
    *,
    allowed_values: Iterable[str] = (),
    pattern: str | None = None,
    max_length: int | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    required: bool = False,
) -> ArgumentConstraint:
    """An `ArgumentConstraint` from plain values, checked and compiled; `ValueError` names the
    fault. An empty pattern means none (protobuf's unset string)."""
    values = tuple(allowed_values)
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"allowed values must be strings, not {type(value).__name__}")
    compiled = None
    if pattern:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"pattern is longer than {MAX_PATTERN_LENGTH} characters")
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern does not compile: {error}") from None
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
        raise ValueError("max_length must be an integer")
    return ArgumentConstraint(
        allowed_values=frozenset(values),
        pattern=compiled,
        max_length=max_length,
        minimum=None if minimum is None else float(minimum),
        maximum=None if maximum is None else float(maximum),
        required=required,
    )


def check_arguments(
    arguments: Mapping[str, Any] | None, constraints: Mapping[str, ArgumentConstraint]
) -> Violation | None:
    """The first argument (in the constraints' order) that breaks its constraint, or None.
    Arguments no constraint names are allowed."""
    if arguments is None:
        arguments = {}
    elif not isinstance(arguments, Mapping):
        return Violation("", "arguments must be an object")
    for name, constraint in constraints.items():
        if name not in arguments:
            if constraint.required:
                return Violation(_public_name(name), "required argument is missing")
            continue
        reason = _constraint_problem(arguments[name], constraint)
        if reason is not None:
            return Violation(_public_name(name), reason)
    return None


def _constraint_problem(value: Any, constraint: ArgumentConstraint) -> str | None:
    kind = _kind(value)
    if constraint.allowed_values and not _is_allowed_value(value, constraint):
        return f"{kind} is not one of the allowed values"
    if constraint.max_length is not None:
        limit = constraint.max_length
        if isinstance(value, str) and len(value) > limit:
            return f"string is longer than {limit} characters"
        if isinstance(value, list | tuple) and len(value) > limit:
            return f"array has more than {limit} items"
        if isinstance(value, Mapping) and json_size(value) > limit:
            return f"object is larger than {limit} bytes"
    if constraint.pattern is not None:
        if isinstance(value, str):
            text = value
        elif kind == "number":
            text = _number_text(value)
        else:
            return f"{kind} where a string matching the pattern is required"
        if constraint.pattern.fullmatch(text) is None:
            return f"{kind} does not match the required pattern"
    if constraint.minimum is not None or constraint.maximum is not None:
        if kind != "number":
            return f"{kind} where a number is required"
        if isinstance(value, float) and not math.isfinite(value):
            return "number is not finite"
        if constraint.minimum is not None and value < constraint.minimum:
            return f"number is below the minimum {constraint.minimum:g}"
        if constraint.maximum is not None and value > constraint.maximum:
            return f"number is above the maximum {constraint.maximum:g}"
    return None


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "value"


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else orjson.dumps(value).decode()


def _is_allowed_value(value: Any, constraint: ArgumentConstraint) -> bool:
    allowed = constraint.allowed_values
    if isinstance(value, str):
        return value in allowed
    if isinstance(value, bool):
        return ("true" if value else "false") in allowed
    if value is None:
        return "null" in allowed
    if isinstance(value, int | float):
        if _number_text(value) in allowed:
            return True
        try:
            return float(value) in constraint._allowed_numbers
        except OverflowError:
            return False
    return False


def _public_name(name: str) -> str:
    return name if len(name) <= _NAME_LIMIT else name[: _NAME_LIMIT - 1] + "…"


# --------------------------------------------------------------------------------------------
# Walking the arguments


class _TooComplex(Exception):
    """The arguments are nested deeper or hold more strings than the checks inspect."""


def _strings(value: Any, out: list[str]) -> None:
    """Every string in `value` (object keys too) appended to `out`, within the bounds."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping):
            if depth >= MAX_DEPTH:
                raise _TooComplex
            for key, child in item.items():
                if isinstance(key, str):
                    out.append(key)
                if isinstance(child, str):
                    out.append(child)
                elif isinstance(child, Mapping | list | tuple):
                    stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            if depth >= MAX_DEPTH:
                raise _TooComplex
            for child in item:
                if isinstance(child, str):
                    out.append(child)
                elif isinstance(child, Mapping | list | tuple):
                    stack.append((child, depth + 1))
        if len(out) + len(stack) > MAX_STRINGS:
            raise _TooComplex


def _named_strings(
    arguments: Mapping[str, Any], only: frozenset[str]
) -> list[tuple[str, list[str]]] | Violation:
    """Per inspected top-level argument, its name and every string in it (its name first)."""
    named: list[tuple[str, list[str]]] = []
    total = 0
    for name, value in arguments.items():
        if only and name not in only:
            continue
        strings = [name]
        try:
            _strings(value, strings)
        except _TooComplex:
            return Violation(
                _public_name(name), "argument is too deeply nested or too large to inspect"
            )
        total += len(strings)
        if total > MAX_STRINGS:
            return Violation(_public_name(name), "arguments hold too many strings to inspect")
        named.append((name, strings))
    return named


# --------------------------------------------------------------------------------------------
# Network destinations


def _ranges(entries: Iterable[tuple[str, str]]) -> tuple[tuple[int, int, str], ...]:
    out = []
    for cidr, label in entries:
        network = ipaddress.ip_network(cidr)
        out.append((int(network.network_address), int(network.broadcast_address), label))
    return tuple(out)


# Denied unless an allowed network covers the address. Specific entries come first so the
# reason names the most telling range.
_DENIED_IPV4: Final = _ranges(
    (
        ("169.254.169.254/32", "cloud metadata address"),
        ("0.0.0.0/8", "unspecified ('this network') address"),
        ("10.0.0.0/8", "private address"),
        ("100.64.0.0/10", "carrier-grade NAT address"),  # also Alibaba's metadata 100.100.100.200
        ("127.0.0.0/8", "loopback address"),
        ("169.254.0.0/16", "link-local address"),
        ("172.16.0.0/12", "private address"),
        ("192.0.0.0/24", "IETF protocol address"),  # also Oracle's metadata 192.0.0.192
        ("192.0.2.0/24", "documentation address"),
        ("192.88.99.0/24", "reserved 6to4 relay address"),
        ("192.168.0.0/16", "private address"),
        ("198.18.0.0/15", "benchmarking address"),
        ("198.51.100.0/24", "documentation address"),
        ("203.0.113.0/24", "documentation address"),
        ("224.0.0.0/4", "multicast address"),
        ("240.0.0.0/4", "reserved address"),  # includes the broadcast 255.255.255.255
    )
)
_DENIED_IPV6: Final = _ranges(
    (
        ("fd00:ec2::254/128", "cloud metadata address"),
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("64:ff9b:1::/48", "local-use NAT64 address"),
        ("100::/64", "discard-only address"),
        ("2001::/23", "IETF protocol address"),  # includes Teredo 2001::/32, which tunnels to v4
        ("2001:db8::/32", "documentation address"),
        ("3fff::/20", "documentation address"),
        ("5f00::/16", "segment routing address"),
        ("fc00::/7", "unique local (private) address"),
        ("fe80::/10", "link-local address"),
        ("fec0::/10", "site-local address"),
        ("ff00::/8", "multicast address"),
    )
)
# Only 2000::/3 is allocated as global unicast; the rest of the IPv6 space is reserved.
_GLOBAL_UNICAST_V6: Final = (0x2 << 124, (0x4 << 124) - 1)
_NAT64_PREFIX: Final = int(ipaddress.IPv6Address("64:ff9b::")) >> 32

_DENIED_NAMES: Final = {
    "localhost": "local host name",
    "localhost.localdomain": "local host name",
    "ip6-localhost": "local host name",
    "ip6-loopback": "local host name",
    "broadcasthost": "local host name",
    "metadata": "cloud metadata host name",
    "instance-data": "cloud metadata host name",
    "metadata.google.internal": "cloud metadata host name",
}
_DENIED_SUFFIXES: Final = (
    (".localhost", "local host name"),
    (".internal", "internal host name"),
    (".local", "link-local (mDNS) host name"),
    (".home.arpa", "home network host name"),
)

# Characters IDNA maps to nothing (soft hyphen, zero-width and bidi controls, variation
# selectors), and the ideographic full stops it reads as dots.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufe00-\ufe0f\ufeff]"
)
_TAB_NEWLINE = str.maketrans({"\t": None, "\n": None, "\r": None})
_PERCENT_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_DESTINATION_HINT = re.compile(r"[.:/\\%\[]")

# The scans below start with a literal or a character class, never a lookbehind, so that the
# regex engine skips ahead to candidates at C speed (a 16 KB argument is mostly prose); the
# token boundaries are checked in Python on the few matches, and runs to the left of a match
# are found by matching the reversed window (`_left_run`).
_DELIMITERS: Final = frozenset(" \t\r\n\"'<>`")
# "scheme://authority" with any scheme (the authority is judged whatever the scheme is, which
# also covers "1http://"); the lookahead keeps the match short, so URLs nested in one are found.
_URL_AUTHORITY = re.compile(r":[/\\]{2,}+(?=([^\s\"'<>`]+))")
# WHATWG's special schemes take the authority after any number of slashes, even none or one.
_URL_SPECIAL = re.compile(r"(?:https?|wss?|ftp|file):[/\\]?+(?=([^\s\"'<>`/\\][^\s\"'<>`]*))")
_SCHEME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+.-")
_SCHEME_REVERSED = re.compile(r"[a-z0-9+.\-]{1,32}")
_AUTHORITY_END = re.compile(r"[/\\?#]")
# A scheme-relative URL (//host/x) or a UNC name (\\host\share) at the start of a token.
_SCHEME_RELATIVE = re.compile(r"[/\\]{2}(?=([^\s\"'<>`/\\]+))")
_PORT = re.compile(r":[0-9]{1,5}+(?!\w)")
_HOST_REVERSED = re.compile(r"[\w.\-]{1,253}")
_IPV4_PART = r"(?:0x[0-9a-f]*|[0-9]+)"
# A dotted quad in any base; shorter dotted forms only where a hex part ("0x") is in the text.
_IPV4_QUAD = re.compile(rf"[0-9](?:x[0-9a-f]*|[0-9]*)(?:\.{_IPV4_PART}){{3}}(?!\w|\.[0-9])")
_IPV4_TEXT = re.compile(rf"[0-9](?:x[0-9a-f]*|[0-9]*)(?:\.{_IPV4_PART}){{1,3}}(?!\w|\.[0-9])")
_IPV6_BRACKETED = re.compile(r"\[([0-9a-f:.]{2,45})(?:%[^\]\s]{0,64})?\]")
# Two colons with at most one hex group between them: in every bare IPv6 literal.
_IPV6_ANCHOR = re.compile(r":[0-9a-f]{0,4}:")
_IPV6_RUN = re.compile(r"[0-9a-f:.]{1,45}")
_IPV6_ZONE = re.compile(r"%[\w.\-~]{1,64}")
_IPV6_GROUP = re.compile(r"[0-9a-f]+")
_DENIED_NAME_TEXT = re.compile(
    r"(?<![\w.\-/\\])((?:[\w\-]+\.)*localhost|(?:[\w\-]+\.)+(?:internal|local|home\.arpa))"
    r"\.*(?![\w\-]|\.[\w\-])"
)
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Which network destinations found in a call's arguments are allowed.

    Public hosts and addresses are allowed. Denied unless allowed here: loopback, private
    (RFC 1918, IPv6 ULA), link-local (incl. the cloud metadata 169.254.169.254 and
    fd00:ec2::254), carrier-grade NAT, unspecified, multicast, documentation, benchmarking and
    other reserved ranges, the same embedded in IPv6 (mapped, translated, NAT64, 6to4; Teredo and
    IPv4-compatible are denied outright), and the names `localhost`, `*.localhost`, `metadata`,
    `instance-data`, `metadata.google.internal`, `*.internal`, `*.local`, `*.home.arpa`.

    `allowed_hosts` holds exact names and `*.example.com` wildcards (any name below
    example.com, not example.com itself); `allowed_networks` the CIDRs the operator allows.
    `arguments`, when not empty, limits the check to those top-level arguments (e.g. `url`, not
    the `content` of a file being written); empty means every argument.
    """

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[Network, ...] = ()
    arguments: frozenset[str] = frozenset()
    _exact_hosts: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _host_suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())
    _networks_v4: tuple[tuple[int, int], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    _networks_v6: tuple[tuple[int, int], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for host in self.allowed_hosts:
            wildcard = host.startswith("*.")
            name = _fold(host[2:] if wildcard else host).rstrip(".")
            if not name or not _HOST_NAME.fullmatch(name):
                raise ValueError(f"allowed host {host!r} is not a host name or *.suffix wildcard")
            if _ends_in_number(name) or ":" in name:
                raise ValueError(f"allowed host {host!r} is an address: use allowed_networks")
            if wildcard:
                suffixes.append("." + name)
            else:
                exact.add(name)
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for network in self.allowed_networks:
            if not isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise ValueError(f"allowed network {network!r} is not an ipaddress network")
            span = (int(network.network_address), int(network.broadcast_address))
            (v4 if network.version == 4 else v6).append(span)
        object.__setattr__(self, "_exact_hosts", frozenset(exact))
        object.__setattr__(self, "_host_suffixes", tuple(sorted(suffixes)))
        object.__setattr__(self, "_networks_v4", tuple(v4))
        object.__setattr__(self, "_networks_v6", tuple(v6))


_HOST_NAME = re.compile(r"[\w\-]+(?:\.[\w\-]+)*")


def build_destination_policy(
    allowed_hosts: Iterable[str] = (),
    allowed_networks: Iterable[str] = (),
    arguments: Iterable[str] = (),
) -> DestinationPolicy:
    """A `DestinationPolicy` from plain strings (CIDRs like `10.1.0.0/16`; a bare address is a
    single-address network); `ValueError` names the fault, e.g. host bits set in a CIDR."""
    networks = []
    for text in allowed_networks:
        try:
            networks.append(ipaddress.ip_network(text.strip()))
        except ValueError as error:
            raise ValueError(f"allowed network {text!r} is not a CIDR network: {error}") from None
    return DestinationPolicy(
        allowed_hosts=frozenset(allowed_hosts),
        allowed_networks=tuple(networks),
        arguments=frozenset(arguments),
    )


def find_destinations(value: Any) -> list[str]:
    """The network destinations found in the strings of `value` (nested objects and arrays,
    keys too): URLs of any scheme with an authority (http, https, ftp, ws, gopher, file with a
    host, ...), `host:port`, IPv4 and IPv6 literals, and names that are denied wherever they
    appear (`localhost`, `*.internal`, ...). Texts are as normalised for judging (lower case,
    NFKC, percent-decoded), deduplicated, in order. `ValueError` if `value` is too large or deep
    to inspect.

    What counts (so that plain text is not mistaken for addresses):
    - in a URL or `host:port`, the host is read as a URL parser reads it: decimal
      (`2130706433`), octal, hex and short (`127.1`) IPv4 forms, `[v6%zone]`, userinfo;
    - elsewhere, an IPv4 literal is a dotted quad in any base (`0177.0.0.1`) or a shorter
      dotted form with a hex part (`0x7f.1`); plain `127.1` or `10.15` there is a number or a
      version, and a lone integer or `0x10` a number;
    - elsewhere, an IPv6 literal needs brackets or two non-empty groups (`fe80::1`), so that
      Python slices like `a[::2]` are not addresses; a whole string `::1` counts;
    - `metadata` and `instance-data` count only as a whole string, a URL host or `host:port`
      (they are ordinary words in text); `localhost` and names under a denied suffix count
      anywhere (not as a path component like `/etc/x.local`).
    """
    strings: list[str] = []
    try:
        _strings(value, strings)
    except _TooComplex:
        raise ValueError("value is too deeply nested or too large to inspect") from None
    found: dict[str, None] = {}
    for text in strings:
        for variant, urls_only in _destination_variants(text):
            for token, _host, _context in _scan_destinations(variant, urls_only):
                found[token] = None
    return list(found)


def check_destinations(
    arguments: Mapping[str, Any] | None, policy: DestinationPolicy
) -> Violation | None:
    """The first argument naming a network destination the policy denies, or None."""
    if arguments is None:
        return None
    if not isinstance(arguments, Mapping):
        return Violation("", "arguments must be an object")
    named = _named_strings(arguments, policy.arguments)
    if isinstance(named, Violation):
        return named
    for name, strings in named:
        for text in strings:
            label = _denied_destination(text, policy)
            if label is not None:
                return Violation(_public_name(name), f"denied network destination: {label}")
    return None


def _denied_destination(text: str, policy: DestinationPolicy) -> str | None:
    if text.isascii() and _DESTINATION_HINT.search(text) is None:
        # No dot, colon, slash, bracket or escape: at most a bare name (most strings, keys).
        folded = text.lower()
        if "localhost" not in folded and folded.strip() not in _DENIED_NAMES:
            return None
    for variant, urls_only in _destination_variants(text):
        for _token, host, context in _scan_destinations(variant, urls_only):
            label = _judge_host(host, context, policy)
            if label is not None:
                return label
    return None


def _fold(text: str) -> str:
    """Text as host names compare: IDNA's mapping (ignorables dropped, NFKC, ideographic dots
    as dots), lower case."""
    if not text.isascii():
        if _IGNORABLE.search(text):
            text = _IGNORABLE.sub("", text)
        text = unicodedata.normalize("NFKC", text)
        if "\u3002" in text:  # NFKC already made U+FF0E a dot and U+FF61 this one
            text = text.replace("\u3002", ".")
    return text.lower()


def _percent_decoded(text: str) -> str:
    """`text` percent-decoded until it no longer changes (bounded: double and triple encoding)."""
    for _ in range(4):
        decoded = unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def _destination_variants(text: str) -> list[tuple[str, bool]]:
    """The readings of one string to scan, with whether only URLs are to be looked for: as sent
    and percent-decoded, each also without the tabs and newlines WHATWG URL parsing deletes
    (`http://loc<TAB>alhost`; only URLs, as the deletion glues words together)."""
    folded = _fold(text)
    variants = [(folded, False)]
    if "%" in text and _PERCENT_ESCAPE.search(text):
        decoded = _fold(_percent_decoded(text))
        if decoded != folded:
            variants.append((decoded, False))
    if "\t" in text or "\n" in text or "\r" in text:
        variants += [(variant.translate(_TAB_NEWLINE), True) for variant, _ in variants]
    return variants


# Where a host was found decides how leniently it is read: in a URL or host:port it is a host,
# elsewhere a literal-looking token in text that may be something else.
_URL_HOST: Final = "url"
_TEXT: Final = "text"


def _left_run(text: str, end: int, reversed_run: re.Pattern[str], limit: int) -> int:
    """Where the run of `reversed_run`'s characters that ends at `end` starts."""
    match = reversed_run.match(text[max(0, end - limit) : end][::-1])
    return end - match.end() if match else end


def _word_before(text: str, index: int) -> bool:
    """Whether a word character (or one of `.-`) touches `index` from the left."""
    if index == 0:
        return False
    before = text[index - 1]
    return before.isalnum() or before in "_.-"


def _scan_destinations(text: str, urls_only: bool = False) -> list[tuple[str, str, str]]:
    """(token, host, context) for every destination in one folded string."""
    found: list[tuple[str, str, str]] = []
    if "//" in text or "\\" in text:
        for match in _URL_AUTHORITY.finditer(text):
            colon, rest = match.start(), match.group(1)
            scheme_start = _left_run(text, colon, _SCHEME_REVERSED, 32)
            scheme = text[scheme_start:colon]
            token = text[scheme_start : match.end()] + rest
            for host in _authority_hosts(rest):
                if scheme == "file" and host in ("", "localhost"):
                    continue  # a local file: the path check's business
                if host:
                    found.append((token, host, _URL_HOST))
        for match in (
            _SCHEME_RELATIVE.finditer(text)
            if "\\\\" in text or text.count("//") != text.count("://")
            else ()
        ):
            start = match.start()
            if start > 0 and (_word_before(text, start) or text[start - 1] in ":/\\"):
                continue
            for host in _authority_hosts(match.group(1)):
                if host:
                    found.append((match.group(0) + match.group(1), host, _URL_HOST))
    if ":" not in text:
        if urls_only:
            return found
    else:
        for match in _URL_SPECIAL.finditer(text):
            start = match.start()
            if start > 0 and text[start - 1] in _SCHEME_CHARS:
                continue  # "xhttp:" is another scheme
            for host in _authority_hosts(match.group(1)):
                if host and not (match.group(0).startswith("file") and host == "localhost"):
                    found.append((match.group(0) + match.group(1), host, _URL_HOST))
        if urls_only:
            return found
        for match in _PORT.finditer(text):
            colon = match.start()
            if colon > 0 and text[colon - 1] == "]":
                start = text.rfind("[", max(0, colon - 64), colon)
                if start < 0:
                    continue
            else:
                start = _left_run(text, colon, _HOST_REVERSED, 253)
            host = text[start:colon]
            if not host or (start > 0 and text[start - 1] in ":["):
                continue
            # "12:30" and "1024:768" are times and ratios; a lone number below 2**24 would be
            # an address in 0.0.0.0/8, which no stack connects to but 0 itself.
            if host.isdigit() and host.strip("0") and int(host) < 1 << 24:
                continue
            found.append((text[start : match.end()], host, _URL_HOST))
        if "[" in text:
            for match in _IPV6_BRACKETED.finditer(text):
                start = match.start()
                if ":" in match.group(1) and not (
                    _word_before(text, start) or text[start - 1 : start] in ("]", ")")
                ):
                    found.append((match.group(0), match.group(1), _TEXT))
        done = 0
        for match in _IPV6_ANCHOR.finditer(text):
            if match.start() < done:
                continue
            start = _left_run(text, match.start(), _IPV6_RUN, 45)
            run = _IPV6_RUN.match(text, match.start())
            end = run.end() if run else match.end()
            done = end
            zone = _IPV6_ZONE.match(text, end)
            after = zone.end() if zone else end
            if (start > 0 and (_word_before(text, start) or text[start - 1] in "%[")) or (
                after < len(text) and (text[after].isalnum() or text[after] in "_]")
            ):
                continue
            literal = text[start:end].rstrip(".")
            # Python slices (a[::2]) have one group at most; an address worth writing has two.
            if len(_IPV6_GROUP.findall(literal)) >= 2:
                found.append((literal, literal, _TEXT))
    if "." in text:
        for match in (_IPV4_TEXT if "0x" in text else _IPV4_QUAD).finditer(text):
            literal = match.group(0)
            if (literal.count(".") == 3 or "0x" in literal) and not _word_before(
                text, match.start()
            ):
                found.append((literal, literal, _TEXT))
        if "localhost" in text or ".internal" in text or ".local" in text or ".home.arpa" in text:
            for match in _DENIED_NAME_TEXT.finditer(text):
                found.append((match.group(1), match.group(1), _URL_HOST))
    elif "localhost" in text:
        for match in _DENIED_NAME_TEXT.finditer(text):
            found.append((match.group(1), match.group(1), _URL_HOST))
    if len(text) <= 255:
        whole = text.strip().rstrip(".")
        if whole in _DENIED_NAMES or (whole.count(":") >= 2 and _parse_ipv6(whole) is not None):
            found.append((whole, whole, _URL_HOST))
    return found


def _authority_hosts(rest: str) -> list[str]:
    """The hosts a URL's authority may name, read the ways parsers disagree: the authority ends
    at the first of / \\ ? # (WHATWG) or only at / (naive parsers), and the host follows the last
    or any '@'. `http://good.com#@169.254.169.254` yields both."""
    hosts: list[str] = []
    narrow = _AUTHORITY_END.split(rest, maxsplit=1)[0]
    wide = rest.split("/", 1)[0]
    for authority in (narrow, wide) if wide != narrow else (narrow,):
        pieces = authority.split("@")
        for piece in pieces[1:] if len(pieces) > 1 else pieces:
            host = _without_port(piece)
            if host not in hosts:
                hosts.append(host)
    return hosts


def _without_port(authority: str) -> str:
    if authority.startswith("["):
        end = authority.find("]")
        return authority if end < 0 else authority[: end + 1]
    return authority.split(":", 1)[0]


def _judge_host(host: str, context: str, policy: DestinationPolicy) -> str | None:
    """Why `host` is denied, or None. In a URL or host:port, a numeric host that does not parse
    is denied (parsers disagree on it); in free text it is just not an address."""
    if "%" in host and not host.startswith("["):
        host = _fold(_percent_decoded(host))
    host = host.strip()
    if _CONTROL.search(host):
        # A resolver written in C stops at a NUL: localhost%00.good.com is localhost to it.
        return "malformed host name" if context == _URL_HOST else None
    if host.startswith("["):
        inner = _fold(_percent_decoded(host[1:].removesuffix("]")))
        address = _parse_ipv6(inner)
        if address is None:
            return "malformed IPv6 address" if context == _URL_HOST else None
        return _judge_ipv6(address, policy)
    host = host.rstrip(".")
    if ":" in host:
        address = _parse_ipv6(host)
        if address is None:
            return "malformed IPv6 address" if context == _URL_HOST else None
        return _judge_ipv6(address, policy)
    if _ends_in_number(host):
        number = _parse_ipv4(host)
        if number is None:
            return "malformed IPv4 address" if context == _URL_HOST else None
        return _judge_ipv4(number, policy)
    return _judge_name(host, policy)


def _judge_name(name: str, policy: DestinationPolicy) -> str | None:
    if name in policy._exact_hosts or name.endswith(policy._host_suffixes):
        return None
    label = _DENIED_NAMES.get(name)
    if label is not None:
        return label
    for suffix, label in _DENIED_SUFFIXES:
        if name.endswith(suffix):
            return label
    # A name embedding a denied dotted quad (127.0.0.1.nip.io) resolves to it on wildcard-DNS
    # services; the quad itself is caught by the literal scan, which reaches inside names.
    return None


def _judge_ipv4(number: int, policy: DestinationPolicy) -> str | None:
    for low, high in policy._networks_v4:
        if low <= number <= high:
            return None
    for low, high, label in _DENIED_IPV4:
        if low <= number <= high:
            return label
    return None


def _judge_ipv6(number: int, policy: DestinationPolicy) -> str | None:
    for low, high in policy._networks_v6:
        if low <= number <= high:
            return None
    embedded = _embedded_ipv4(number)
    if embedded is not None:
        label = _judge_ipv4(embedded, policy)
        return None if label is None else f"{label} embedded in IPv6"
    for low, high, label in _DENIED_IPV6:
        if low <= number <= high:
            return label
    if not _GLOBAL_UNICAST_V6[0] <= number <= _GLOBAL_UNICAST_V6[1]:
        return "reserved address"  # includes the deprecated IPv4-compatible ::a.b.c.d
    return None


def _embedded_ipv4(number: int) -> int | None:
    """The IPv4 address an IPv6 address reaches: IPv4-mapped ::ffff:0:0/96, translated
    ::ffff:0:0:0/96, NAT64 64:ff9b::/96, 6to4 2002::/16."""
    high = number >> 32
    if high in (0xFFFF, 0xFFFF0000, _NAT64_PREFIX):
        return number & 0xFFFFFFFF
    if number >> 112 == 0x2002:
        return (number >> 80) & 0xFFFFFFFF
    return None


def _parse_ipv6(text: str) -> int | None:
    text = text.split("%", 1)[0]  # the zone id names an interface, not an address
    if not 2 <= len(text) <= 45:
        return None
    try:
        return int(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _ends_in_number(host: str) -> bool:
    """WHATWG's test: a host whose last label is numeric is parsed as IPv4 (or is invalid)."""
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(last) and (
        (last.isascii() and last.isdigit()) or _HEX_NUMBER.fullmatch(last) is not None
    )


def _parse_ipv4(host: str) -> int | None:
    """An IPv4 host as WHATWG URL parsing and inet_aton read it: 1 to 4 parts, each decimal,
    octal (leading 0) or hex (0x); the last part fills the remaining bytes."""
    parts = host.rstrip(".").split(".")
    if len(parts) > 4:
        return None
    values = []
    for part in parts:
        value = _ipv4_part(part)
        if value is None:
            return None
        values.append(value)
    last = values.pop()
    if any(value > 255 for value in values) or last >= 256 ** (4 - len(values)):
        return None
    number = last
    for index, value in enumerate(values):
        number |= value << (8 * (3 - index))
    return number


def _ipv4_part(part: str) -> int | None:
    if not part or len(part) > 34 or not part.isascii():
        return None
    try:
        if part.startswith("0x"):
            return int(part[2:], 16) if len(part) > 2 else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# File paths

_DOTDOT_SEGMENT = re.compile(r"(?:^|/)\.\.(?:/|$)")
_HOME = re.compile(r"~(?:[a-z_][\w.\-]*)?(?:/|$)", re.IGNORECASE)
_DRIVE = re.compile(r"[a-z]:(?:/|$)", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s")
# Windows reads a name of dots and spaces ("...", ".. ") as a parent or current directory.
_DOTS_AND_SPACES = re.compile(r"[. ]+")
# Overlong UTF-8 (the classic %c0%ae for '.' and %c0%af for '/'): no honest encoder emits it.
_OVERLONG = re.compile(rb"[\xc0\xc1]|\xe0[\x80-\x9f]|\xf0[\x80-\x8f]")
_PATH_HINT = re.compile(r"[/\\~%]|\.\.")


@dataclass(frozen=True, slots=True)
class PathPolicy:
    """Where file paths found in a call's arguments may point: inside `allowed_roots`
    (normalised absolute POSIX paths, e.g. `/data`). With no roots, every path is denied.

    What counts as a path, in any string of the arguments (after percent-decoding until
    stable, NFKC, backslashes read as separators, surrounding whitespace trimmed):
    - a string starting with `/` (spaces inside allowed), `~` or `~user`, `file:`, a Windows
      drive (`C:\\`) or a UNC/device prefix (`\\\\host`, `//host`, `\\\\?\\`);
    - a string without whitespace holding a `..` segment (`../x`, `a\\..\\b`, `..`).
    So `1.5`, `v2/...`, `a/b` and prose are not paths: a relative path without `..` stays
    under the tool server's working directory. Shell commands (`cat /etc/passwd`) are text, not
    paths: confine a shell tool by denying it, not with this check.

    Denied: `~` (the home is the server's, unknown here), Windows and UNC paths, file URLs naming
    a remote host, NUL bytes, overlong or invalid UTF-8 in a percent-decoded path, relative paths
    with `..` (their base is unknown), components of only dots and spaces other than `.` and
    `..` (Windows reads `...` and `.. ` as a parent), and absolute paths not inside a root.
    An absolute path must enter its root without any `..` and never climb above it
    (`/data/x/../y` is inside /data; `/data/../data/x` and `/tmp/../data/x` are not: a lexical
    `..` after a symlink lies).
    The root check is component-wise, so `/data2` is not inside `/data`. Both the string as sent
    and its decoded/NFKC forms must pass (a server may decode or not).

    Symlinks inside a root cannot be seen from the gateway: the tool server must not follow
    links out of its roots. `arguments`, when not empty, limits the check to those top-level
    arguments (e.g. `path`, not the `content` of a file being written).
    """

    allowed_roots: tuple[str, ...] = ()
    arguments: frozenset[str] = frozenset()
    _root_parts: tuple[tuple[str, ...], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        parts = []
        for root in self.allowed_roots:
            if _normalised_root(root) != root:
                raise ValueError(f"allowed root {root!r} is not a normalised absolute path")
            parts.append(tuple(part for part in root.split("/") if part))
        object.__setattr__(self, "_root_parts", tuple(parts))


def _normalised_root(root: str) -> str:
    if not isinstance(root, str) or not root.startswith("/"):
        raise ValueError(f"allowed root {root!r} is not an absolute POSIX path")
    if "\x00" in root or "\\" in root:
        raise ValueError(f"allowed root {root!r} holds a NUL byte or a backslash")
    if ".." in root.split("/"):
        raise ValueError(f"allowed root {root!r} holds '..'")
    if unicodedata.normalize("NFKC", root) != root:
        raise ValueError(f"allowed root {root!r} is not in NFKC form (paths are compared so)")
    return "/" + posixpath.normpath(root).lstrip("/")


def build_path_policy(
    allowed_roots: Iterable[str] = (), arguments: Iterable[str] = ()
) -> PathPolicy:
    """A `PathPolicy` from plain strings, roots normalised (`/data/` and `//data/.` are
    `/data`); `ValueError` for a relative root or one holding `..`, NUL or a backslash."""
    roots: dict[str, None] = {}
    for root in allowed_roots:
        roots[_normalised_root(root)] = None
    return PathPolicy(allowed_roots=tuple(roots), arguments=frozenset(arguments))


def check_paths(arguments: Mapping[str, Any] | None, policy: PathPolicy) -> Violation | None:
    """The first argument holding a file path outside the policy's roots, or None."""
    if arguments is None:
        return None
    if not isinstance(arguments, Mapping):
        return Violation("", "arguments must be an object")
    named = _named_strings(arguments, policy.arguments)
    if isinstance(named, Violation):
        return named
    for name, strings in named:
        for text in strings[1:]:  # the argument's own name is not a path
            reason = _path_problem(text, policy)
            if reason is not None:
                return Violation(_public_name(name), reason)
    return None


def _path_problem(text: str, policy: PathPolicy) -> str | None:
    if text.isascii() and _PATH_HINT.search(text) is None:
        return None
    forms = [text]
    if "%" in text and _PERCENT_ESCAPE.search(text):
        try:
            data = unquote_to_bytes(text)
        except UnicodeEncodeError:
            return "path with an invalid character"
        for _ in range(8):
            decoded = unquote_to_bytes(data)
            if decoded == data:
                break
            data = decoded
        else:
            return "too many layers of percent-encoding"
        if _OVERLONG.search(data):
            return "overlong UTF-8 encoding"
        try:
            forms.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            lenient = data.decode("utf-8", "replace")
            if _path_kind(lenient) is not None:
                return "path with invalid UTF-8 encoding"
    for form in list(forms):
        if not form.isascii():
            normalised = unicodedata.normalize("NFKC", form)
            if normalised != form:
                forms.append(normalised)
    for form in forms:
        reason = _form_problem(form, policy)
        if reason is not None:
            return reason
    return None


def _path_kind(form: str) -> str | None:
    """What kind of path `form` is (see PathPolicy), or None for a string that is not one."""
    trimmed = form.strip()
    path = trimmed.replace("\\", "/")
    if path[:5].lower() == "file:":
        return "file"
    if path.startswith("~") and _HOME.match(path):
        return "home"
    if _DRIVE.match(path):
        return "drive"
    if path.startswith("//"):
        return "unc"
    if path.startswith("/"):
        return "absolute"
    if ".." in path and _DOTDOT_SEGMENT.search(path) and not _WHITESPACE.search(trimmed):
        return "relative"
    return None


def _form_problem(form: str, policy: PathPolicy) -> str | None:
    kind = _path_kind(form)
    if kind is None:
        return None
    path = form.strip().replace("\\", "/")
    if "\x00" in path:
        return "NUL byte in path"
    if kind == "home":
        return "home-relative path (~)"
    if kind == "drive":
        return "Windows drive path"
    if kind == "unc":
        return "UNC or network path"
    if kind == "relative":
        return "relative path with '..'"
    if kind == "file":
        return _file_url_problem(path[5:], policy)
    return _absolute_problem(path, policy)


def _file_url_problem(rest: str, policy: PathPolicy) -> str | None:
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host.lower() not in ("", "localhost"):
            return "file URL naming a remote host"
        path = "/" + path
    else:
        path = rest
    if _DRIVE.match(path.lstrip("/")):
        return "Windows drive path"
    if path.startswith("//"):
        return "UNC or network path"
    if not path.startswith("/"):
        return "file URL without an absolute path"
    return _absolute_problem(path, policy)


def _absolute_problem(path: str, policy: PathPolicy) -> str | None:
    if not policy._root_parts:
        return "path outside the allowed roots (none are configured)"
    parts = [part for part in path.split("/") if part and part != "."]
    for part in parts:
        if part != ".." and _DOTS_AND_SPACES.fullmatch(part):
            return "path component of only dots and spaces"
    climbed = False
    for root in policy._root_parts:
        size = len(root)
        if tuple(parts[:size]) != root:
            continue
        depth = 0
        for part in parts[size:]:
            depth += -1 if part == ".." else 1
            if depth < 0:
                climbed = True
                break
        else:
            return None
    return "path climbs above its root with '..'" if climbed else "path outside the allowed roots"
