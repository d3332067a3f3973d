import pytest

from api.upload_names import MAX_NAME_CHARS, clean_name, header_file_name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("promotions-2026-12-06.csv", "promotions-2026-12-06.csv"),
        ("../../etc/passwd", "passwd"),
        ("C:\\exports\\promos.csv", "promos.csv"),
        ("/abs/dir/", None),
        ("..", None),
        ("", None),
        (None, None),
        ("  promos\x00\n.csv \u202e", "promos.csv"),
        ("prix été.csv", "prix été.csv"),
        ("x" * 400, "x" * MAX_NAME_CHARS),
    ],
)
def test_a_name_is_its_last_path_component_without_control_characters(
    raw: str | None, shown: str | None
) -> None:
    assert clean_name(raw) == shown


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b'attachment; filename="promos.csv"', "promos.csv"),
        (b"attachment; filename=promos.csv", "promos.csv"),
        (b"attachment; filename*=UTF-8''pr%C3%A9.csv", "pré.csv"),
        (b"attachment; filename=\"x.csv\"; filename*=UTF-8''pr%C3%A9.csv", "pré.csv"),
        ('form-data; name="file"; filename="été.csv"'.encode(), "été.csv"),
        (b"attachment", None),
        (b"", None),
    ],
)
def test_the_file_name_of_a_content_disposition(header: bytes, name: str | None) -> None:
    assert header_file_name(header) == name
