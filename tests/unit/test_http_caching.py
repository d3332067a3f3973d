"""The entity-tag match of If-None-Match and the lifetimes' settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.http_caching import LookupCachePolicy, etag, if_none_match_of, none_match
from shared.settings import Settings

TAG = etag(3, "abc-1")


def test_the_tag_names_version_and_id() -> None:
    assert TAG == b'"v3-abc-1"'
    assert etag(4, "abc-1") != TAG


@pytest.mark.parametrize(
    "header",
    [b'"v3-abc-1"', b'W/"v3-abc-1"', b'"x","v3-abc-1"', b' "x" , W/"v3-abc-1" ', b"*"],
)
def test_a_matching_if_none_match(header: bytes) -> None:
    assert not none_match(header, TAG)


@pytest.mark.parametrize(
    "header", [b'"v2-abc-1"', b'"v3-abc-10"', b"v3-abc-1", b"", b'"v3-ABC-1"', b'"*"']
)
def test_a_header_that_does_not_match(header: bytes) -> None:
    assert none_match(header, TAG)


def test_several_if_none_match_fields_are_one_list() -> None:
    headers = [(b"if-none-match", b'"a"'), (b"host", b"x"), (b"if-none-match", b'"b"')]
    assert if_none_match_of(headers) == b'"a","b"'
    assert if_none_match_of([(b"host", b"x")]) is None


def test_policy_headers_from_settings() -> None:
    policy = LookupCachePolicy.from_settings(
        Settings(lookup_max_age_s=10, lookup_negative_max_age_s=1, lookup_stale_if_error_s=0)
    )
    assert policy.found == (b"cache-control", b"public, max-age=10")
    assert policy.missing == (b"cache-control", b"public, max-age=1")


def test_a_404_cannot_outlive_an_answer() -> None:
    with pytest.raises(ValidationError, match="LOOKUP_NEGATIVE_MAX_AGE_S"):
        Settings(lookup_max_age_s=2, lookup_negative_max_age_s=3)
