import gzip

import pytest

from shared.fileformat.file_checks import sniff_problem

GOOD = b"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST\n"


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (b"", "empty"),
        (b"id,price,expiration_date\n", "no data rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (gzip.compress(GOOD), "gzip"),
        ("id,price\n".encode("utf-16"), "UTF-16"),
        (b"name;price;date\nfoo;1;2\n", "none of the first 2 rows is valid"),
        (GOOD.replace(b"\n", b"\r") * 3, "CR-only line endings"),
    ],
)
def test_plainly_wrong_files_fail_fast_with_a_reason(sample: bytes, reason: str) -> None:
    problem = sniff_problem(sample, is_whole_file=True)
    assert problem is not None and reason in problem


def test_a_good_start_passes() -> None:
    assert sniff_problem(GOOD * 10 + b"bad row\n", is_whole_file=True) is None
    assert sniff_problem(GOOD * 10 + b"partial li", is_whole_file=False) is None
