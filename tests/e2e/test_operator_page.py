"""The operator page and the API docs in a real headless browser (Debian's chromium driven by
Playwright; no browser download), with every request off this machine blocked, as on a host
without internet access: upload a file, watch its job finish, roll back."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from cli.generate import generate
from devstack.services import Service, api_command, free_port
from tests.helpers import wait_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# ReDoc's "API docs by Redocly" footer image: it hides itself when it cannot load (the only
# request either docs page makes off this machine; nothing depends on it).
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
TOKEN = "operator-page-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # reads other than lookups need it too
# Set to a path to refresh the screenshot of docs/operator-page.md:
# PROMOTIONS_UI_SCREENSHOT=docs/operator-page.png
SCREENSHOT = os.environ.get("PROMOTIONS_UI_SCREENSHOT")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine: `make system-deps` installs Debian's package, and "
    "could not here (see its warning)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that may only reach 127.0.0.1: any other request is blocked and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    outside: list[str] = []

    def only_local(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    outside = [url for url in outside if url != REDOC_LOGO]
    assert outside == [], f"the page tried to reach other hosts: {outside}"
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture(scope="module")
def token_api(services: None, logs_dir: Path) -> Iterator[str]:
    """The API with a write token, as operators run it."""
    port = free_port()
    svc = Service(
        "api-token",
        api_command("127.0.0.1", port),
        env={"WRITE_TOKEN": TOKEN},
        port=port,
        log_path=logs_dir / "api-token.log",
    )
    svc.start().wait_ready(60)
    yield f"http://127.0.0.1:{port}"
    svc.stop()


def test_swagger_ui_and_redoc_render_without_internet(page: Any, api_url: str) -> None:
    page.goto(f"{api_url}/docs")
    paths = page.locator(".swagger-ui .opblock-summary-path")
    paths.first.wait_for(timeout=20_000)
    assert "/promotions/{promotion_id}" in paths.all_inner_texts()
    assert paths.count() >= 8
    page.goto(f"{api_url}/redoc")
    page.locator("h2", has_text="Progress and outcome of an ingestion job").wait_for(timeout=20_000)
    assert page.locator("h1").first.inner_text().startswith("Promotions service")


def _upload(page: Any, path: Path) -> str:
    page.set_input_files("#upload-file", str(path))
    page.click("#upload-button")
    page.wait_for_selector("#upload-text >> text=/stored: job/", timeout=60_000)
    found = re.search(r"job (\w+)", page.inner_text("#upload-text"))
    assert found is not None
    job_id = found.group(1)
    page.wait_for_selector(f"tr[data-job-id='{job_id}'][data-status='succeeded']", timeout=120_000)
    return job_id


@pytest.mark.usefixtures("worker", "clean_state")
def test_upload_watch_the_job_and_roll_back_in_the_browser(
    page: Any, token_api: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    generate(3_000, first, seed=41, bad_ratio=0.003)
    generate(2_000, second, seed=42)

    page.goto(f"{token_api}/ui")
    assert page.url == f"{token_api}/ui/"
    page.wait_for_selector("#error:not([hidden])")  # the jobs need a token to be read
    assert "Authorization: Bearer" in page.inner_text("#error")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#jobs-empty:not([hidden])")

    first_job = _upload(page, first)
    # The line under the form follows the job to its end (it said "is queued" for good).
    page.wait_for_selector(f"#upload-text >> text=/job {first_job} succeeded/", timeout=10_000)
    row = page.locator(f"tr[data-job-id='{first_job}']")
    job = httpx.get(f"{token_api}/jobs/{first_job}", headers=AUTH).json()
    assert job["rows_rejected"] > 0, job
    text = row.inner_text()
    assert "first.csv" in text and job["original_name"] == "first.csv"  # the name it was sent as
    assert f"{job['rows_loaded']:,} rows" in text and "rows/s" in text and "rejected" in text
    assert f"loaded as version {job['dataset_version']}" in text and "serving" in text
    link = row.locator("a.rejects-link")
    assert link.get_attribute("href") == f"../jobs/{first_job}/rejects"
    assert f"rejects ({job['rows_rejected']})" in link.inner_text()
    with page.expect_download() as download:
        link.click()  # fetched with the token (a plain link could not send it)
    assert Path(download.value.path()).read_text().startswith("line,reason,raw")

    second_job = _upload(page, second)
    old = job["dataset_version"]
    new = httpx.get(f"{token_api}/jobs/{second_job}", headers=AUTH).json()["dataset_version"]
    page.wait_for_selector(f"#datasets tr[data-version='{new}'][data-active='true']")
    assert "2,000 rows" in page.inner_text("#active")

    # Roll back: the button asks for the write token; a wrong one is refused in the dialog.
    page.click(f"#datasets tr[data-version='{old}'] button.activate")
    assert page.locator("#activate-dialog").is_visible()
    page.fill("#activate-token", "wrong-token")
    page.click("#activate-confirm")
    page.wait_for_selector("#activate-error:not([hidden])")
    assert "403" in page.inner_text("#activate-error")
    page.fill("#activate-token", TOKEN)
    page.click("#activate-confirm")
    page.wait_for_selector(f"#datasets tr[data-version='{old}'][data-active='true']")
    assert not page.locator("#activate-dialog").is_visible()
    assert httpx.get(f"{token_api}/datasets/active", headers=AUTH).json()["version"] == old
    assert f"version {old}," in page.inner_text("#active")
    page.wait_for_selector(f"tr[data-job-id='{first_job}'] >> text=serving")
    assert "serving" not in page.locator(f"tr[data-job-id='{second_job}']").inner_text()
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)


@pytest.mark.usefixtures("worker", "clean_state")
def test_swagger_ui_authorize_and_try_it_out_uploads_a_file(
    page: Any, token_api: str, tmp_path: Path
) -> None:
    """The document declares the bearer scheme: Authorize in /docs sends the token, and
    "Try it out" on the upload stores the file (202)."""
    path = tmp_path / "from-swagger.csv"
    path.write_text('"id","price","expiration_date"\na1,1.5,2027-12-01 07:38:51.532085+00\n')
    page.goto(f"{token_api}/docs")
    page.click(".swagger-ui .auth-wrapper button.authorize")
    page.fill(".swagger-ui .modal-ux input[type=text], .swagger-ui .modal-ux input", TOKEN)
    page.click(".swagger-ui .modal-ux button.modal-btn.auth.authorize")
    page.click(".swagger-ui .modal-ux button.btn-done")
    operation = page.locator("#operations-ingestion-add_promotions")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("input[type=file]").set_input_files(str(path))
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status")
    status.first.wait_for(timeout=30_000)
    assert status.first.inner_text().strip() == "202", operation.inner_text()
    body = operation.locator(".live-responses-table tbody .response-col_description").inner_text()
    job_id = re.search(r'"job_id": "(\w+)"', body)
    assert job_id is not None, body
    auth = {"Authorization": f"Bearer {TOKEN}"}  # reading jobs needs it too
    with httpx.Client(base_url=token_api, timeout=30, headers=auth) as http:
        job = wait_job(http, job_id.group(1))
        assert job["status"] == "succeeded" and job["rows_loaded"] == 1, job
        assert http.get("/promotions/a1").json()["expiration_date"] == (
            "2027-12-01 07:38:51.532085+00"
        )


def test_ages_read_like_a_clock_and_the_token_placeholder_fits(page: Any, api_url: str) -> None:
    page.goto(f"{api_url}/ui/")
    page.wait_for_selector("#jobs-empty:not([hidden]), #jobs tr")
    said = page.evaluate("[59.4, 59.6, 119.6, 3599.7, 7199.9, 9.96].map(duration)")
    assert said == ["59 s", "1 min 0 s", "2 min 0 s", "1 h 0 min", "2 h 0 min", "10 s"]
    # The placeholder's text fits in the field (it was cut off).
    room, needed = page.evaluate(
        """() => {
            const input = document.getElementById("token");
            const style = getComputedStyle(input);
            const ctx = document.createElement("canvas").getContext("2d");
            ctx.font = `${style.fontSize} ${style.fontFamily}`;
            const room = input.clientWidth - parseFloat(style.paddingLeft)
                - parseFloat(style.paddingRight);
            return [room, ctx.measureText(input.placeholder).width];
        }"""
    )
    assert needed <= room, (needed, room)
