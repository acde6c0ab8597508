"""Argument rules of MCP tool calls: constraints per argument, network destinations (one row per
bypass technique, and the allowed rows that keep the check from being "deny everything") and
file paths confined to roots."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from gatez.agent_rules import (
    MAX_DEPTH,
    MAX_STRINGS,
    ArgumentConstraint,
    DestinationPolicy,
    PathPolicy,
    Violation,
    build_constraint,
    build_destination_policy,
    build_path_policy,
    check_arguments,
    check_destinations,
    check_paths,
    find_destinations,
    json_size,
)

# --------------------------------------------------------------------------------------------
# Constraints

ENUM = build_constraint(allowed_values=["read", "write", "42", "1.50", "true", "null"])
PATTERN = build_constraint(pattern=r"[a-z0-9_]{1,16}")
LENGTH = build_constraint(max_length=5)
RANGE = build_constraint(minimum=1, maximum=10)
REQUIRED = build_constraint(required=True)


@pytest.mark.parametrize(
    ("constraint", "value", "reason"),
    [
        (ENUM, "read", None),
        (ENUM, "READ", "string is not one of the allowed values"),
        (ENUM, 42, None),
        (ENUM, 42.0, None),  # the number 42, however the client spells it
        (ENUM, 1.5, None),  # "1.50" in the policy is the number 1.5
        (ENUM, 43, "number is not one of the allowed values"),
        (ENUM, True, None),
        (ENUM, False, "boolean is not one of the allowed values"),
        (ENUM, None, None),
        (ENUM, ["read"], "array is not one of the allowed values"),
        (ENUM, {"read": 1}, "object is not one of the allowed values"),
        (PATTERN, "abc_1", None),
        (PATTERN, "abc-1", "string does not match the required pattern"),
        (PATTERN, "abc\n", "string does not match the required pattern"),  # a full match
        (PATTERN, "x" * 17, "string does not match the required pattern"),
        (PATTERN, 7, None),  # a number's JSON text
        (PATTERN, True, "boolean where a string matching the pattern is required"),
        (PATTERN, None, "null where a string matching the pattern is required"),
        (PATTERN, ["abc"], "array where a string matching the pattern is required"),
        (LENGTH, "héllo", None),  # characters, not bytes
        (LENGTH, "hello!", "string is longer than 5 characters"),
        (LENGTH, [1, 2, 3, 4, 5], None),
        (LENGTH, [1, 2, 3, 4, 5, 6], "array has more than 5 items"),
        (LENGTH, {}, None),  # b"{}"
        (LENGTH, {"a": 1}, "object is larger than 5 bytes"),  # b'{"a":1}' is 7
        (LENGTH, 1234567, None),  # numbers have no length
        (RANGE, 1, None),
        (RANGE, 10.0, None),
        (RANGE, 0.999, "number is below the minimum 1"),
        (RANGE, 11, "number is above the maximum 10"),
        (RANGE, "5", "string where a number is required"),
        (RANGE, True, "boolean where a number is required"),
        (RANGE, float("nan"), "number is not finite"),
        (REQUIRED, None, None),  # present, even if null
    ],
)
def test_constraint(constraint: ArgumentConstraint, value: Any, reason: str | None) -> None:
    expected = None if reason is None else Violation("arg", reason)
    assert check_arguments({"arg": value}, {"arg": constraint}) == expected


def test_required_and_unnamed_arguments() -> None:
    constraints = {"mode": ENUM, "name": REQUIRED}
    assert check_arguments({"name": "x", "extra": object()}, constraints) is None
    assert check_arguments({"mode": "read"}, constraints) == Violation(
        "name", "required argument is missing"
    )
    assert check_arguments(None, constraints) == Violation("name", "required argument is missing")
    assert check_arguments(None, {"mode": ENUM}) is None
    # The first violation in the constraints' order.
    assert check_arguments({"mode": "x"}, constraints) == Violation(
        "mode", "string is not one of the allowed values"
    )


def test_a_reason_never_echoes_the_value() -> None:
    secret = "sk-live-abcdef0123456789"
    for constraint in (ENUM, PATTERN, LENGTH, RANGE):
        violation = check_arguments({"token": secret}, {"token": constraint})
        assert violation is not None
        assert secret not in violation.reason


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"pattern": "("}, "pattern does not compile"),
        ({"pattern": "a" * 1001}, "pattern is longer than 1000 characters"),
        ({"max_length": -1}, "max_length must not be negative"),
        ({"max_length": 1.5}, "max_length must be an integer"),
        ({"minimum": 5, "maximum": 1}, "minimum is greater than maximum"),
        ({"maximum": float("inf")}, "maximum must be a finite number"),
        ({"allowed_values": [1]}, "allowed values must be strings"),
    ],
)
def test_build_constraint_refuses(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_constraint(**arguments)


def test_build_constraint_compiles_once() -> None:
    constraint = build_constraint(pattern="a+", allowed_values=("a", "aa"))
    assert isinstance(constraint.pattern, re.Pattern)
    assert build_constraint(pattern="").pattern is None  # protobuf's unset string
    assert constraint == build_constraint(pattern="a+", allowed_values=["aa", "a"])


def test_json_size() -> None:
    assert json_size({"a": [1, "é"]}) == len('{"a":[1,"é"]}'.encode())


# --------------------------------------------------------------------------------------------
# Network destinations

POLICY = build_destination_policy(
    allowed_hosts=["db.corp.internal", "*.svc.cluster.local", "API.Example.org."],
    allowed_networks=["10.1.0.0/16", "fd12:3456::/32"],
)
NO_EXCEPTIONS = DestinationPolicy()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # Denied ranges and names.
        ("http://127.0.0.1/admin", "loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://169.254.10.1/", "link-local address"),
        ("http://10.0.0.5:8080/", "private address"),
        ("https://172.16.3.4/", "private address"),
        ("https://192.168.1.1/", "private address"),
        ("http://100.100.100.200/latest/meta-data/", "carrier-grade NAT address"),
        ("http://0.0.0.0:8000/", "unspecified ('this network') address"),
        ("http://224.0.0.1/", "multicast address"),
        ("http://255.255.255.255/", "reserved address"),
        ("http://[::1]/", "loopback address"),
        ("http://[::]/", "unspecified address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata address"),
        ("http://[fc00::1]/", "unique local (private) address"),
        ("http://[fe80::1%25eth0]/", "link-local address"),  # zone id, URL-encoded
        ("http://[ff02::1]/", "multicast address"),
        ("http://localhost:3000/", "local host name"),
        ("http://LOCALHOST./", "local host name"),  # case and trailing dot
        ("http://app.localhost/", "local host name"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata host name"),
        ("http://metadata/computeMetadata/v1/", "cloud metadata host name"),
        ("http://instance-data/latest/", "cloud metadata host name"),
        ("http://redis.prod.internal:6379", "internal host name"),
        ("http://printer.local/", "link-local (mDNS) host name"),
        # Numeric obfuscations of 127.0.0.1 and 169.254.169.254.
        ("http://2130706433/", "loopback address"),  # decimal
        ("http://0177.0.0.1/", "loopback address"),  # octal
        ("http://0x7f.1/", "loopback address"),  # hex, short
        ("http://0x7f000001/", "loopback address"),  # one hex number
        ("http://127.1/", "loopback address"),  # short form
        ("http://0251.0376.0251.0376/", "cloud metadata address"),  # octal
        ("http://169.254.43518/", "cloud metadata address"),  # 16-bit last part
        ("http://127.0.0.1./", "loopback address"),  # trailing dot
        ("http://0/", "unspecified ('this network') address"),
        # IPv6 forms of IPv4 addresses.
        ("http://[::ffff:127.0.0.1]/", "loopback address embedded in IPv6"),
        ("http://[::ffff:a9fe:a9fe]/", "cloud metadata address embedded in IPv6"),
        ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata address embedded in IPv6"),  # NAT64
        ("http://[2002:7f00:1::]/", "loopback address embedded in IPv6"),  # 6to4
        ("http://[::127.0.0.1]/", "reserved address"),  # IPv4-compatible, deprecated
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "IETF protocol address"),  # Teredo
        # URL parser differentials.
        ("http://good.com@169.254.169.254/", "cloud metadata address"),
        ("http://169.254.169.254#@good.com/", "cloud metadata address"),
        ("http://good.com#@169.254.169.254/", "cloud metadata address"),  # naive parsers
        ("http://good.com\\@127.0.0.1/", "loopback address"),  # urlsplit reads host after @
        ("http://a@b@localhost/", "local host name"),
        ("http:\\\\127.0.0.1\\x", "loopback address"),  # backslashes as slashes
        ("http:127.0.0.1/", "loopback address"),  # WHATWG: no slashes needed
        ("http:///127.0.0.1/", "loopback address"),  # nor exactly two
        ("http://loc\talhost/", "local host name"),  # WHATWG deletes tabs and newlines
        ("//localhost/admin", "local host name"),  # scheme-relative
        ("\\\\metadata\\share", "cloud metadata host name"),  # UNC
        ("http://localhost%00.good.com/", "malformed host name"),  # C resolvers stop at NUL
        ("https://example.com/?next=http://metadata/", "cloud metadata host name"),  # nested URL
        # Encodings.
        ("http://%31%32%37.0.0.1/", "loopback address"),
        ("http://%6c%6f%63%61%6c%68%6f%73%74/", "local host name"),
        ("http://127.0.0.1%252F@good.com/", "loopback address"),  # double encoding
        ("http://169。254。169。254/", "cloud metadata address"),  # ideographic full stops
        ("http://127\uff0e0\uff0e0\uff0e1/", "loopback address"),  # full-width dots
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "loopback address"),  # full-width
        ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "local host name"),
        ("http://local\u00adhost/", "local host name"),  # soft hyphen, which IDNA drops
        ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", "local host name"),  # enclosed letters
        # Other schemes with an authority.
        ("gopher://127.0.0.1:6379/_INFO", "loopback address"),
        ("ftp://10.0.0.1/", "private address"),
        ("ws://localhost:8080/socket", "local host name"),
        ("dict://169.254.169.254:11211/", "cloud metadata address"),
        ("file://169.254.169.254/share", "cloud metadata address"),  # SMB on Windows
        # Bare hosts and literals.
        ("localhost:8080", "local host name"),
        ("metadata:80", "cloud metadata host name"),
        ("127.1:80", "loopback address"),  # short form with a port
        ("2130706433:80", "loopback address"),  # a lone number with a port is a host
        ("[::1]:8080", "loopback address"),
        ("10.0.0.1", "private address"),
        ("0177.0.0.1", "loopback address"),
        ("0x7f.1", "loopback address"),
        ("::1", "loopback address"),
        ("fe80::1%eth0", "link-local address"),
        ("::ffff:169.254.169.254", "cloud metadata address embedded in IPv6"),
        ("metadata", "cloud metadata host name"),
        ("curl -s 169.254.169.254/latest/meta-data/iam/", "cloud metadata address"),
        ("ssh admin@db.prod.internal", "internal host name"),
        ("connect to localhost and dump", "local host name"),
        ("http://127.0.0.1.nip.io/", "loopback address"),  # wildcard DNS embedding a literal
        # Hosts that are malformed where a URL parser would read them.
        ("http://1.2.3.256.4/", "malformed IPv4 address"),
        ("http://[::1::2]/", "malformed IPv6 address"),
    ],
)
def test_denied_destination(value: str, reason: str) -> None:
    violation = check_destinations({"target": value}, POLICY)
    assert violation == Violation("target", f"denied network destination: {reason}")


@pytest.mark.parametrize(
    "value",
    [
        "https://api.github.com/repos/x/y",
        "http://93.184.215.14/",
        "https://[2606:4700:4700::1111]/dns-query",
        "http://8.8.8.8:53",
        "ftp://ftp.debian.org/debian/",
        "http://[::ffff:8.8.8.8]/",  # mapped public address
        "http://[2002:808:808::]/",  # 6to4 of a public address
        # Allowed by the policy.
        "http://10.1.2.3:5432/",  # inside 10.1.0.0/16
        "http://[::ffff:10.1.2.3]/",  # the same, mapped
        "http://[fd12:3456::1]/",  # inside an allowed IPv6 network
        "postgres://db.corp.internal:5432/app",  # exact allowed host
        "http://web.default.svc.cluster.local/",  # allowed wildcard under *.local
        "http://api.example.org/",  # allowed host, normalised from "API.Example.org."
        "http://user:pass@public.example.com/",
        # Not destinations.
        "1.5",
        "10.15",  # a version, not 10.0.0.15
        "0.5",
        "127.1",  # the number 127.1; with a scheme or a port it would be an address
        "2130706433",  # a number
        "0x10",
        "v1.2.3",
        "meeting at 12:30:45",
        "ratio 16:9",
        "std::vector<int> v; a[::2]; b[::-1]; c[1::2];",
        "aa:bb:cc:dd:ee:ff",
        "update the metadata of the report",
        "the instance-data table",
        "docker-compose.local.yml",
        ".env.local",
        "/etc/hosts.local",
        "mylocalhost_url",
        "file:///data/report.csv",  # a local file: the path check's business
        "file://localhost/data/report.csv",
        "2024-01-01T12:30:00Z",
        "Note: http: is insecure",
        "// TODO: fix",
        "//cdn.example.com/lib.js",
        "see https://en.wikipedia.org/wiki/Localhost for more",
    ],
)
def test_allowed_destination(value: str) -> None:
    assert check_destinations({"target": value}, POLICY) is None


def test_the_policy_is_what_allows() -> None:
    for value in ("http://10.1.2.3/", "http://db.corp.internal/", "http://web.svc.cluster.local/"):
        assert check_destinations({"url": value}, NO_EXCEPTIONS) is not None
    # A wildcard allows names below it, not the name itself.
    assert check_destinations({"url": "http://svc.cluster.local/"}, POLICY) is not None


def test_destinations_are_found_anywhere_in_the_arguments() -> None:
    arguments = {
        "request": {"headers": [{"name": "X-Forward", "value": "http://10.0.0.9/"}]},
        "http://169.254.169.254/": "as a key",
    }
    assert check_destinations(arguments, POLICY) == Violation(
        "request", "denied network destination: private address"
    )
    assert check_destinations({"http://169.254.169.254/": 1}, POLICY) == Violation(
        "http://169.254.169.254/", "denied network destination: cloud metadata address"
    )
    assert check_destinations({"n": 2130706433, "flag": True, "none": None}, POLICY) is None
    assert check_destinations(None, POLICY) is None


def test_find_destinations() -> None:
    found = find_destinations(
        {"a": ["see http://Example.com:8080/x and 10.0.0.1", {"b": "db.internal:5432"}]}
    )
    assert found == [
        "http://example.com:8080/x",
        "example.com:8080",
        "10.0.0.1",
        "db.internal:5432",
        "db.internal",  # also found as a denied name
    ]
    assert find_destinations("just words, 1.5 and v2/...") == []


def test_argument_scope() -> None:
    policy = DestinationPolicy(arguments=frozenset({"url"}))
    arguments = {"url": "https://example.com/", "content": "curl http://localhost/"}
    assert check_destinations(arguments, policy) is None
    assert check_destinations(arguments, NO_EXCEPTIONS) is not None


def test_walk_is_bounded() -> None:
    deep: Any = "http://example.com/"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    assert check_destinations({"deep": deep}, POLICY) == Violation(
        "deep", "argument is too deeply nested or too large to inspect"
    )
    wide = {"many": ["x"] * (MAX_STRINGS + 1)}
    assert check_destinations(wide, POLICY) is not None
    assert check_paths(wide, build_path_policy(["/data"])) is not None
    with pytest.raises(ValueError, match="too deeply nested"):
        find_destinations(deep)


@pytest.mark.parametrize(
    ("hosts", "networks", "message"),
    [
        (["*.*.example.com"], [], "is not a host name or *.suffix wildcard"),
        (["exa mple.com"], [], "is not a host name"),
        (["10.0.0.1"], [], "is an address: use allowed_networks"),
        ([], ["10.1.2.3/16"], "is not a CIDR network"),
        ([], ["example.com"], "is not a CIDR network"),
    ],
)
def test_build_destination_policy_refuses(
    hosts: list[str], networks: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_destination_policy(hosts, networks)


def test_build_destination_policy() -> None:
    policy = build_destination_policy(["*.Example.COM"], ["10.0.0.0/8", "::1"])
    assert policy.allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert check_destinations({"u": "http://[::1]/"}, policy) is None
    assert check_destinations({"u": "http://A.example.com/"}, policy) is None


# --------------------------------------------------------------------------------------------
# File paths

PATHS = build_path_policy(["/data", "/srv/share/"])
NO_ROOTS = PathPolicy()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("/etc/passwd", "path outside the allowed roots"),
        ("/data2/x", "path outside the allowed roots"),  # a prefix of the string, not the path
        ("/data/../etc/passwd", "path climbs above its root with '..'"),
        ("/data/x/../../etc/shadow", "path climbs above its root with '..'"),
        ("/data/../data/x", "path climbs above its root with '..'"),  # /data may be a symlink
        ("/tmp/../data/x", "path outside the allowed roots"),
        ("../../etc/passwd", "relative path with '..'"),
        ("reports/../../../etc/passwd", "relative path with '..'"),
        ("..", "relative path with '..'"),
        ("..\\..\\windows\\win.ini", "relative path with '..'"),  # backslashes
        ("/data\\..\\etc\\passwd", "path climbs above its root with '..'"),
        ("/data/%2e%2e/etc/passwd", "path climbs above its root with '..'"),  # percent-encoded
        ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "relative path with '..'"),
        ("/data/%252e%252e/%252e%252e/etc", "path climbs above its root with '..'"),  # double
        ("/data/%c0%ae%c0%ae/etc", "overlong UTF-8 encoding"),
        ("/data/%ff%fe/x", "path with invalid UTF-8 encoding"),
        ("/data/\uff0e\uff0e/etc/passwd", "path climbs above its root with '..'"),  # full-width
        ("/data/\u2025/etc", "path climbs above its root with '..'"),  # two dot leader, NFKC '..'
        ("\uff0fetc\uff0fpasswd", "path outside the allowed roots"),  # full-width solidus
        ("/\uff44ata/x", "path outside the allowed roots"),  # not /data to the server
        ("/data/ok.txt\x00.png", "NUL byte in path"),
        ("/data/ok.txt%00.png", "NUL byte in path"),  # percent-encoded
        ("~/.ssh/id_rsa", "home-relative path (~)"),
        ("~root/.bashrc", "home-relative path (~)"),
        ("~", "home-relative path (~)"),
        ("C:\\Windows\\System32\\config\\SAM", "Windows drive path"),
        ("c:/windows/win.ini", "Windows drive path"),
        ("\\\\attacker\\share\\x", "UNC or network path"),
        ("\\\\?\\C:\\secret", "UNC or network path"),
        ("//etc/passwd", "UNC or network path"),
        ("file:///etc/passwd", "path outside the allowed roots"),
        ("FILE:/etc/passwd", "path outside the allowed roots"),
        ("file://localhost/data/../etc/passwd", "path climbs above its root with '..'"),
        ("file://attacker/share", "file URL naming a remote host"),
        ("file:///C:/Windows/win.ini", "Windows drive path"),
        ("  /etc/passwd  ", "path outside the allowed roots"),
        ("/data/..../etc", "path component of only dots and spaces"),  # Windows: a parent
        ("/data/.. /etc", "path component of only dots and spaces"),
        ("/etc/ssh/ssh config", "path outside the allowed roots"),  # spaces do not hide a path
        ("https://example.com/a/../../../etc/passwd", "relative path with '..'"),
    ],
)
def test_denied_path(value: str, reason: str) -> None:
    assert check_paths({"path": value}, PATHS) == Violation("path", reason)


@pytest.mark.parametrize(
    "value",
    [
        "/data",
        "/data/",
        "/data/reports/q3.csv",
        "/data/./reports//q3.csv",
        "/data/reports/../summary.md",  # climbs, but not above the root
        "/data/My Documents/notes.txt",
        "/data/100%25 done.txt",
        "/data/%E2%82%AC.txt",  # a percent-encoded euro sign
        "/data/café.txt",
        "/srv/share/a/b",
        "file:///data/report.csv",
        "file://localhost/srv/share/x",
        "report.csv",  # relative without '..': stays under the server's working directory
        "reports/q3.csv",
        "1.5",
        "v2/...",  # '...' is a name, not '..'
        "and/or",
        "~5 minutes",
        "see ../README.md for details",  # prose: whitespace, so not a path
        "cat /etc/passwd",  # a shell command is text, not a path
        "50% off",
        "https://example.com/a/b",
    ],
)
def test_allowed_path(value: str) -> None:
    assert check_paths({"path": value}, PATHS) is None


def test_no_roots_denies_every_path() -> None:
    assert check_paths({"p": "/data/x"}, NO_ROOTS) == Violation(
        "p", "path outside the allowed roots (none are configured)"
    )
    assert check_paths({"p": "notes.txt"}, NO_ROOTS) is None
    assert check_paths({"p": "/anything"}, build_path_policy(["/"])) is None


def test_paths_are_found_anywhere_in_the_arguments() -> None:
    arguments = {"ops": [{"copy": {"from": "/data/a", "to": "/etc/cron.d/x"}}]}
    assert check_paths(arguments, PATHS) == Violation("ops", "path outside the allowed roots")
    assert check_paths({"ops": {"/etc/passwd": "key"}}, PATHS) is not None
    # The argument's own name is not a path.
    assert check_paths({"/etc/passwd": "ok"}, PATHS) is None


def test_path_argument_scope() -> None:
    policy = build_path_policy(["/data"], arguments=["path"])
    arguments = {"path": "/data/x.c", "content": "/* a C comment */"}
    assert check_paths(arguments, policy) is None
    assert check_paths(arguments, PATHS) is not None


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("data", "is not an absolute POSIX path"),
        ("/data/../etc", "holds '..'"),
        ("/da\x00ta", "holds a NUL byte or a backslash"),
        ("C:\\data", "is not an absolute POSIX path"),
        ("/\uff44ata", "is not in NFKC form"),
    ],
)
def test_build_path_policy_refuses(root: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_path_policy([root])


def test_build_path_policy_normalises() -> None:
    assert build_path_policy(["/data/", "//data/.", "/srv//x"]).allowed_roots == (
        "/data",
        "/srv/x",
    )
    with pytest.raises(ValueError, match="not a normalised absolute path"):
        PathPolicy(allowed_roots=("/data/",))
