import asyncio
import gzip
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.upload_stream import UploadError, UploadPace, _MultipartFile, paced
from shared.fileformat.gunzip_file_writer import (
    GunzipFileWriter,
    StoredFileError,
    StoreLimits,
    free_bytes,
    store_file,
)
from shared.settings import MiB

CSV = b"a,1,2018-08-04 05:32:31 +0200 CEST\n" * 1000


def _limits(
    max_bytes: int = 10**9, ratio: float = 10**6, floor: int = 1, min_free: int = 0
) -> StoreLimits:
    return StoreLimits(max_bytes=max_bytes, ratio=ratio, floor=floor, min_free_bytes=min_free)


def _write(
    tmp_path: Path,
    data: bytes,
    piece: int = 777,
    limit: int = 10**9,
    limits: StoreLimits | None = None,
    compressed_size: int | None = None,
) -> Path:
    writer = GunzipFileWriter(tmp_path, limits or _limits(limit), compressed_size=compressed_size)
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


@pytest.mark.parametrize("compressed", [False, True])
def test_a_stored_file_is_written_back_as_it_comes_not_all_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    """Never more than ``sync_bytes`` (plus one piece) of the file left for the final fsync."""
    on_disk: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        real(fd)
        on_disk.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    data = random.Random(3).randbytes(1_500_000).hex().encode()  # 3 MB, gzip halves it
    body = gzip.compress(data) if compressed else data
    every = 200_000
    limits = StoreLimits(max_bytes=10**9, ratio=10**6, floor=1, min_free_bytes=0, sync_bytes=every)
    assert _write(tmp_path, body, piece=4096, limits=limits).read_bytes() == data
    assert len(on_disk) >= len(data) // every - 1
    gaps = [b - a for a, b in zip([0, *on_disk], [*on_disk, len(data)], strict=True)]
    assert max(gaps) < every + 16 * 1024  # plus one piece: 4 KiB sent, ~8 KiB inflated


def test_sync_bytes_0_leaves_the_flush_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    assert _write(tmp_path, CSV * 20).read_bytes() == CSV * 20
    assert calls == []


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
    with source.open("rb") as f:
        assert store_file(f, tmp_path / "out" / "a.csv", _limits()) == (len(CSV), True)
    assert os.listdir(tmp_path / "out") == ["a.csv"]
    assert (tmp_path / "out" / "a.csv").read_bytes() == CSV
    source.write_bytes(gzip.compress(CSV)[:-20])
    with source.open("rb") as f, pytest.raises(StoredFileError, match="truncated"):
        store_file(f, tmp_path / "out" / "b.csv", _limits())
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


def test_the_decompressed_limit_follows_the_compressed_size(tmp_path: Path) -> None:
    bomb = gzip.compress(b"0" * 50_000_000)  # about 49 KB: a ratio near 1000
    limits = _limits(ratio=100, floor=MiB)
    with pytest.raises(StoredFileError, match=r"larger than the limit of \d+ bytes \(100 times"):
        _write(tmp_path, bomb, piece=65536, limits=limits)
    with pytest.raises(StoredFileError, match="larger than the limit of 4900"):
        _write(tmp_path, bomb, piece=65536, limits=limits, compressed_size=49_000)
    assert os.listdir(tmp_path) == []
    # A partner file compresses far less than 100 times; the floor covers any small file.
    rng = random.Random(1)
    rows = b"".join(
        b"%s,%.6f,2018-08-04 05:32:31 +0200 CEST\n"
        % (uuid.UUID(int=rng.getrandbits(128)).bytes.hex().encode(), rng.uniform(0, 99))
        for _ in range(100_000)
    )
    csv_gz = gzip.compress(rows)
    assert len(rows) > 6 * MiB
    assert _write(tmp_path, csv_gz, limits=limits).read_bytes() == rows
    assert _write(tmp_path, gzip.compress(b"0" * MiB), limits=limits).stat().st_size == MiB
    # The absolute cap still applies.
    with pytest.raises(StoredFileError, match=f"larger than the limit of {MiB} bytes$"):
        _write(tmp_path, csv_gz, limits=_limits(max_bytes=MiB, ratio=100, floor=MiB))


def test_an_upload_that_cannot_fit_is_refused_before_any_file(tmp_path: Path) -> None:
    limits = _limits(min_free=free_bytes(tmp_path) + 1024 * MiB)
    with pytest.raises(StoredFileError, match="not enough free space") as exc:
        GunzipFileWriter(tmp_path, limits, compressed_size=10)
    assert exc.value.no_space
    assert os.listdir(tmp_path) == []


def test_writing_stops_when_the_free_space_margin_is_reached(tmp_path: Path) -> None:
    # The margin leaves 16 MiB to write; the stream has 200 MiB.
    limits = _limits(min_free=free_bytes(tmp_path) - 16 * MiB)
    writer = GunzipFileWriter(tmp_path, limits)
    with pytest.raises(StoredFileError, match="not enough free space") as exc:
        for _ in range(200):
            writer.write_many([bytes(MiB)])
    writer.abort()
    assert exc.value.no_space and writer.bytes_written < 40 * MiB
    assert os.listdir(tmp_path) == []


def test_multipart_parts_are_bounded() -> None:
    parser = _MultipartFile(b"XyZ", max_parts=3)
    body = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="' + b"n" * 4000 + b'"\r\n\r\nx\r\n'
        for _ in range(4)
    )
    with pytest.raises(UploadError, match="more than 3 parts") as exc:
        parser.feed(body)
    assert exc.value.status_code == 413
    assert parser.fields_seen == ["n" * 64] * 3  # names kept for the message are cut


def test_a_part_header_over_the_parser_bound_is_refused() -> None:
    parser = _MultipartFile(b"XyZ")
    with pytest.raises(UploadError, match="malformed") as exc:
        parser.feed(b'--XyZ\r\nContent-Disposition: form-data; name="' + b"n" * 5000 + b'"\r\n\r\n')
    assert exc.value.status_code == 400


async def _chunks(pieces: int, every_s: float, size: int) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        await asyncio.sleep(every_s)
        yield b"x" * size


async def _drain(chunks: AsyncIterator[bytes], pace: UploadPace) -> int:
    return sum([len(chunk) async for chunk in paced(chunks, pace)])


def test_a_paused_or_trickling_upload_is_cut_with_a_408() -> None:
    pause = UploadPace(idle_s=0.1, min_bytes_per_s=0, window_s=1)
    with pytest.raises(UploadError, match=r"sent nothing for 0\.1 s") as paused:
        asyncio.run(_drain(_chunks(3, 0.3, 100), pause))
    assert paused.value.status_code == 408
    trickle = UploadPace(idle_s=5, min_bytes_per_s=1000, window_s=0.2)
    with pytest.raises(UploadError, match="slower than 1000 bytes/s"):
        asyncio.run(_drain(_chunks(20, 0.05, 1), trickle))
    assert asyncio.run(_drain(_chunks(20, 0.02, 1000), trickle)) == 20_000  # fast enough


def test_an_upload_is_taken_no_faster_than_its_cap() -> None:
    """200 pieces of 10 kB sent at once: 2 MB at a cap of 10 MB/s takes 0.2 s, not 0."""
    capped = UploadPace(idle_s=5, min_bytes_per_s=0, window_s=30, max_bytes_per_s=10e6)

    async def timed(pace: UploadPace) -> tuple[int, float]:
        began = time.monotonic()
        got = await _drain(_chunks(200, 0, 10_000), pace)
        return got, time.monotonic() - began

    got, took = asyncio.run(timed(capped))
    assert got == 2_000_000 and took >= 0.19, took
    got, took = asyncio.run(timed(UploadPace(idle_s=5)))  # no cap
    assert got == 2_000_000 and took < 0.19, took
