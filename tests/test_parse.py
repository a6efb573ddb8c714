"""Property tests for the pure request parsers in proxy/s3/parse.py."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.model import ByteRange
from proxy.s3 import parse
from proxy.s3.parse import MAX_KEY_BYTES, parse_query, parse_range, parse_target

DOMAINS = ("localhost", "s3.example.com")

# Headers that look like ranges, and anything at all.
_digits = st.text(alphabet="0123456789", max_size=25)
range_like = st.builds(
    lambda unit, ws, a, b, tail: f"{unit}{ws}={ws}{a}-{b}{tail}",
    st.sampled_from(["bytes", "Bytes", "items", "bytes ", ""]),
    st.sampled_from(["", " ", "\t"]),
    _digits,
    _digits,
    st.sampled_from(["", ",0-1", " ", "x", "-"]),
)
any_header = st.one_of(st.text(), range_like)
_offset = st.one_of(st.integers(0, 300), st.integers(0, 10**15))
well_formed = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{a + b}", _offset, _offset),
    st.builds(lambda a: f"bytes={a}-", _offset),
    st.builds(lambda n: f"bytes=-{n}", _offset),
    range_like,
)


@given(any_header)
@example("bytes=")
@example("bytes=-")
@example("bytes=--1")
@example("bytes=1-0")
@example("bytes=99999999999999999999999999-")
@example("bytes=-99999999999999999999999999")
@example("bytes=\u0663-\u0665")
def test_parse_range_never_raises(header: str) -> None:
    rng = parse_range(header)
    if rng is not None:
        assert header.strip().isascii()  # Arabic-Indic or superscript digits are not a range
    if rng is not None:
        assert rng.first is not None or rng.last is not None
        assert rng.first is None or rng.first >= 0
        assert rng.last is None or rng.last >= 0
        if rng.first is not None and rng.last is not None:
            assert rng.last >= rng.first  # a reversed range is ignored, as S3 does


@given(well_formed, st.one_of(st.integers(0, 300), st.integers(0, 10**12)))
@example("bytes=0-0", 0)
@example("bytes=-1", 0)
@example("bytes=-0", 10)
@example("bytes=10-", 10)
@example("bytes=9-", 10)
def test_resolve_stays_inside_the_object(header: str, size: int) -> None:
    rng = parse_range(header)
    assume(rng is not None)
    assert rng is not None
    try:
        first, last = rng.resolve(size)
    except errors.InvalidRange as exc:
        assert exc.status == 416
        # unsatisfiable means: nothing of the object is selected
        assert size == 0 or (rng.first is not None and rng.first >= size) or rng.last == 0
        assert exc.fields["actualObjectSize"] == str(size)
        return
    assert 0 <= first <= last < size
    if rng.first is not None:
        assert first == rng.first
        if rng.last is not None:
            assert last == min(rng.last, size - 1)
        else:
            assert last == size - 1
    else:
        assert rng.last is not None
        assert last == size - 1 and last - first + 1 == min(rng.last, size)


@given(
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**64)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**64)),
    st.integers(min_value=0, max_value=2**64),
)
def test_resolve_any_byte_range(first: int | None, last: int | None, size: int) -> None:
    assume(first is not None or last is not None)
    assume(first is None or last is None or last >= first)
    try:
        lo, hi = ByteRange(first, last).resolve(size)
    except errors.InvalidRange:
        return
    assert 0 <= lo <= hi < size


# -- request targets ------------------------------------------------------------------------
key_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=300
)


@given(key_text)
@example("a\x00b")
@example("%00")
@example("..%2f..%2fetc%2fpasswd")
@example("dir//file")
def test_parse_target_never_yields_nul_or_long_keys(key: str) -> None:
    path = "/bucket/" + quote(key, safe="/")
    try:
        target = parse_target(path, "127.0.0.1:9000", DOMAINS)
    except (errors.InvalidArgument, errors.KeyTooLong) as exc:
        assert exc.status == 400
        assert "\x00" in key or len(key.encode()) > MAX_KEY_BYTES
        return
    assert target.bucket == "bucket"
    assert target.key == key
    assert target.key is None or "\x00" not in target.key


@given(st.text(max_size=200))
def test_parse_target_arbitrary_raw_paths(raw: str) -> None:
    try:
        target = parse_target("/" + raw, "localhost", DOMAINS)
    except (errors.InvalidArgument, errors.InvalidRequest, errors.KeyTooLong):
        return
    if target.key is not None:
        assert "\x00" not in target.key
        assert len(target.key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES
        assert target.key != ""


@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["a", "é", "日", "😀"]))
def test_key_length_limit_counts_utf8_bytes(n: int, char: str) -> None:
    key = char * n
    nbytes = len(key.encode())
    path = "/b/" + quote(key)
    for host in ("localhost:9000", "b.localhost:9000"):
        p = path if host.startswith("localhost") else "/" + quote(key)
        if nbytes > MAX_KEY_BYTES:
            with pytest.raises(errors.KeyTooLong) as exc:
                parse_target(p, host, DOMAINS)
            assert exc.value.code == "KeyTooLongError"
        else:
            target = parse_target(p, host, DOMAINS)
            assert (target.bucket, target.key) == ("b", key)


@given(st.from_regex(r"[a-z0-9][a-z0-9\-]{1,20}[a-z0-9]", fullmatch=True), key_text)
def test_virtual_hosted_equals_path_style(bucket: str, key: str) -> None:
    assume("\x00" not in key and len(key.encode()) <= MAX_KEY_BYTES)
    encoded = quote(key, safe="/")
    path_style = parse_target(f"/{bucket}/{encoded}", "localhost:9000", DOMAINS)
    virtual = parse_target(f"/{encoded}", f"{bucket}.localhost:9000", DOMAINS)
    other_domain = parse_target(f"/{encoded}?x=1", f"{bucket}.S3.Example.com", DOMAINS)
    assert path_style == virtual == other_domain


def test_parse_target_bucket_only_and_root() -> None:
    assert parse_target("/", "localhost", DOMAINS) == parse.Target(None, None)
    assert parse_target("/b", "localhost", DOMAINS) == parse.Target("b", None)
    assert parse_target("/b/", "localhost", DOMAINS) == parse.Target("b", None)
    assert parse_target("/", "b.localhost", DOMAINS) == parse.Target("b", None)
    with pytest.raises(errors.InvalidArgument):
        parse_target("/b/%ff%fe", "localhost", DOMAINS)  # not UTF-8


# -- query strings --------------------------------------------------------------------------
query_value = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]))


@given(st.dictionaries(query_value.filter(bool), query_value, max_size=6))
@example({"prefix": "a+b c", "continuation-token": "AbC+/=="})
@example({"start-after": "x&y=z", "marker": "100%"})
def test_parse_query_round_trips_quoted_values(params: dict[str, str]) -> None:
    raw = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    assert parse_query(raw) == params


@settings(max_examples=50)
@given(query_value)
def test_parse_query_keeps_literal_plus(value: str) -> None:
    # S3 clients send spaces as %20; a literal '+' in a raw query is a plus, not a space.
    raw = "prefix=" + quote(value, safe="+")
    assert parse_query(raw)["prefix"] == value


@given(st.text(max_size=200))
def test_parse_query_never_raises(raw: str) -> None:
    out = parse_query(raw)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


def test_parse_query_flags_without_values() -> None:
    assert parse_query("location") == {"location": ""}
    assert parse_query("list-type=2&prefix=&delimiter=%2F") == {
        "list-type": "2",
        "prefix": "",
        "delimiter": "/",
    }


# -- max-keys -------------------------------------------------------------------------------
@given(st.text(max_size=12))
def test_parse_max_keys(value: str) -> None:
    try:
        n = parse.parse_max_keys(value)
    except errors.InvalidArgument:
        assert not (value.strip().isascii() and value.strip().isdigit())
        return
    assert 0 <= n <= 1000
