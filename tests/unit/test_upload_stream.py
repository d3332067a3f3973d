import gzip
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.upload_stream import UploadError, _MultipartFile
from shared.gunzip_file_writer import GunzipFileWriter, StoredFileError, store_file

CSV = b"a,1,2018-08-04 05:32:31 +0200 CEST\n" * 1000


def _write(tmp_path: Path, data: bytes, piece: int = 777, limit: int = 10**9) -> Path:
    writer = GunzipFileWriter(tmp_path, limit)
    try:
        writer.write_many([data[i : i + piece] for i in range(0, len(data), piece)])
        final = tmp_path / "final.csv"
        writer.finish(final)
    except BaseException:
        writer.abort()
        raise
    return final


def test_plain_bytes_are_stored_as_sent(tmp_path: Path) -> None:
    assert _write(tmp_path, CSV).read_bytes() == CSV


def test_gzip_is_detected_by_magic_and_inflated_while_streaming(tmp_path: Path) -> None:
    two_members = gzip.compress(CSV[:5000]) + gzip.compress(CSV[5000:])
    assert _write(tmp_path, two_members, piece=1).read_bytes() == CSV


def test_truncated_gzip_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoredFileError, match="truncated"):
        _write(tmp_path, gzip.compress(CSV)[:-20])
    assert os.listdir(tmp_path) == []


def test_gzip_bomb_stops_at_the_decompressed_limit(tmp_path: Path) -> None:
    bomb = gzip.compress(b"0" * 50_000_000)
    with pytest.raises(StoredFileError, match="decompressed file is larger") as exc:
        _write(tmp_path, bomb, piece=65536, limit=1_000_000)
    assert exc.value.too_large
    assert os.listdir(tmp_path) == []


def test_empty_upload_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoredFileError, match="empty"):
        _write(tmp_path, b"")


def test_store_file_inflates_a_gzip_file_from_disk(tmp_path: Path) -> None:
    source = tmp_path / "in.csv.gz"
    source.write_bytes(gzip.compress(CSV))
    (tmp_path / "out").mkdir()
    assert store_file(source, tmp_path / "out" / "a.csv", 10**9) == (len(CSV), True)
    assert os.listdir(tmp_path / "out") == ["a.csv"]
    assert (tmp_path / "out" / "a.csv").read_bytes() == CSV
    source.write_bytes(gzip.compress(CSV)[:-20])
    with pytest.raises(StoredFileError, match="truncated"):
        store_file(source, tmp_path / "out" / "b.csv", 10**9)
    assert os.listdir(tmp_path / "out") == ["a.csv"]


def _multipart(body: bytes, field: str = "file", boundary: str = "XyZ") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="../../etc/passwd"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )


@settings(max_examples=100)
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(1, 400), max_size=30))
def test_multipart_file_bytes_survive_any_split(body: bytes, cuts: list[int]) -> None:
    data = _multipart(body)
    parser = _MultipartFile(b"XyZ")
    got, pos = [], 0
    for cut in [*cuts, len(data)]:
        got += parser.feed(data[pos : pos + cut])
        pos += cut
    parser.check_complete()
    assert b"".join(got) == body
    assert parser.fields_seen == ["note", "file"]


def test_multipart_without_the_file_field_names_what_it_got() -> None:
    parser = _MultipartFile(b"XyZ")
    parser.feed(_multipart(b"x", field="upload"))
    with pytest.raises(UploadError, match=r"field 'file' is required.*'note', 'upload'") as exc:
        parser.check_complete()
    assert exc.value.status_code == 422
