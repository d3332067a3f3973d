"""Every accepted form of a row, end to end: uploaded, loaded by real workers, looked up over
the API with the date exactly as written and the price as a JSON number."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from tests.helpers import wait_job

pytestmark = pytest.mark.usefixtures("worker")

# (id, price as written, expiration_date as written, the row as the partner's file has it)
FORMS = [
    ("go-style", "60.683466", "2018-08-04 05:32:31 +0200 CEST", None),
    ("no-zone-name", "60.683466", "2018-08-04 05:32:31 +0200", None),
    ("no-zone", "9.68", "2022-06-04 06:01:20", None),
    ("fraction", "9.68", "2022-06-04 06:01:20.250", None),
    ("iso-z", "1e3", "2022-06-04T06:01:20Z", None),
    ("iso-offset", "1.5E-2", "2022-06-04T06:01:20.123456-03:30", None),
    ("iso-compact-offset", ".5", "2022-06-04T06:01:20+0530", None),
    ("iso-no-zone", "12", "2022-06-04T06:01:20", None),
    ("integer", "0", "2022-06-04 06:01:20Z", None),
    ("quoted-all", "60.683466", "2018-08-04 05:32:31 +0200 CEST", "QUOTE_ALL"),
    ("quoted-some", "7.", "2018-08-04T05:32:31+02:00", "QUOTE_NONNUMERIC"),
    ("quoted-spaced", "2.5", "2018-08-04 05:32:31", "spaced"),
    # As export tools write them (docs/file-format.md).
    ("postgresql", "1", "2027-12-01 07:38:51.532085+00", None),
    ("postgresql-minus", "1", "2027-12-01 07:38:51-03", None),
    ("pandas-aware", "1", "2027-12-01 07:38:51.532085+00:00", None),
    ("polars-aware", "1", "2027-12-01T07:38:51.532085+0000", None),
    ("ruby-utc", "1", "2027-12-01 07:38:51 UTC", None),
    ("ruby-offset", "1", "2027-12-01 07:38:51 +0100", None),
    ("go-time-string", "1", "2027-12-01 07:38:51.532085 +0000 UTC", None),
    ("libreoffice", "1", "2027-12-01 7:38:51", "QUOTE_ALL"),
    ("gmt", "1", "2027-12-01 07:38:51 GMT", None),
]


def _line(row_id: str, price: str, date: str, quoting: str | None) -> str:
    if quoting == "QUOTE_ALL":
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="").writerow([row_id, price, date])
        return buf.getvalue()
    if quoting == "QUOTE_NONNUMERIC":
        return f'"{row_id}",{price},"{date}"'
    if quoting == "spaced":
        return f' "{row_id}" , "{price}" , "{date}" '
    return f"{row_id},{price},{date}"


def test_every_accepted_form_is_served_as_written(client: TestClient) -> None:
    header = '"id","price","expiration_date"\r\n'  # quoted, as R and LibreOffice write it
    content = (header + "".join(_line(*form) + "\r\n" for form in FORMS)).encode()
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["rows_rejected"] == 0, job
    for row_id, price, date, _ in FORMS:
        r = client.get(f"/promotions/{row_id}")
        assert r.status_code == 200, (row_id, r.text)
        body = r.json()
        assert body == {"id": row_id, "price": float(price), "expiration_date": date}
        assert f'"price":{float(price)!r}' in r.text.replace(" ", "")  # a JSON number
