"""The OpenAPI document as a manual: the upload's file format and limits, and an example for
every answer (a status without its own example gets the sentence this API sends for it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from shared.fileformat.promotion_rows import DATE_GRAMMAR, MAX_ID_LENGTH, MAX_LINE_LENGTH
from shared.settings import Settings


def _DEFAULT(name: str) -> str:
    return f"{Settings.model_fields[name].default:g}"


def _GIB(name: str) -> str:
    return f"{Settings.model_fields[name].default / 2**30:g} GiB"


UPLOAD_DESCRIPTION = f"""\
Store the file, record a job and answer **202** with the job's `status_url`; the file loads
in the background and replaces the whole dataset only once it is complete and valid (the
previous dataset serves until then). Also answers at the same path without the trailing slash,
the same way: never a redirect.

**Body**: `multipart/form-data` with the file in the field `file`, or the raw file as the body
(`text/csv`, `application/octet-stream`, `application/gzip`). The job keeps the file's name
(`?name=`, else the multipart file name or a raw body's `Content-Disposition` file name).

**File format** (docs/file-format.md): CSV rows `id,price,expiration_date`, UTF-8, LF or CRLF,
optionally one gzip layer; a first line naming the three columns (any case, quoted or not) is
a header; fields may be in RFC 4180 quotes.

- `id`: 1-{MAX_ID_LENGTH} characters of `A-Z a-z 0-9 _ -`.
- `price`: a finite decimal number >= 0 (`12`, `12.5`, `.5`, `1e3`).
- `expiration_date`: a real calendar instant, returned exactly as written:

```
{DATE_GRAMMAR}```

Examples: `2027-12-01 07:38:51.532085+00` (PostgreSQL, DuckDB), `2027-12-01 07:38:51 UTC`
(Ruby), `2027-12-01 7:38:51` (LibreOffice), `2027-12-01T07:38:51.532Z`,
`2018-08-04 05:32:31 +0200 CEST`. A zone name alone other than UTC/GMT is refused (ambiguous).

**Limits** (settings, defaults): upload at most `MAX_UPLOAD_BYTES` ({_GIB("max_upload_bytes")});
a gzip body inflates to at most `MAX_DECOMPRESSION_RATIO` x its size
({_DEFAULT("max_decompression_ratio")}) and `MAX_DECOMPRESSED_BYTES`
({_GIB("max_decompressed_bytes")}); at most `MAX_MULTIPART_PARTS`
({_DEFAULT("max_multipart_parts")}) parts; lines at most {MAX_LINE_LENGTH} characters.
Rows breaking a rule are rejected with their line number and reason (`GET /jobs/{{id}}/rejects`);
the job fails, and the previous dataset keeps serving, when no row is valid or more than
`REJECT_RATIO` ({Settings.model_fields["reject_ratio"].default:.0%}) are rejected.
"""

# What the API answers for each error status (api/, shared/), as examples; an operation's own
# sentence where the status means something else there.
STATUS_EXAMPLES: dict[str, Any] = {
    "400": {"detail": "the file is empty"},
    "401": {"detail": "this endpoint needs 'Authorization: Bearer <token>'"},
    "403": {"detail": "the bearer token is not valid for writing"},
    "404": {"detail": "job 5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10 not found"},
    "409": {"detail": "job 5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10 is still running; ..."},
    "410": {"detail": "the reject report of job 5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10 was removed"},
    "503": {"detail": "the promotions store is unavailable; retry shortly"},
}
OPERATION_EXAMPLES: dict[tuple[str, str], Any] = {
    ("/datasets/active", "404"): {"detail": "no dataset has been loaded yet"},
    ("/promotions/{promotion_id}", "404"): {
        "detail": "promotion 172FFC14-D229-4C93-B06B-F48B8C095512 not found"
    },
    ("/datasets/{version}/activate", "409"): {"detail": "dataset version 999 does not exist"},
}


def _validation_example(operation: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's 422 for the operation's first parameter given a wrong value."""
    params = operation.get("parameters") or [{"in": "query", "name": "limit", "schema": {}}]
    param = params[0]
    schema = param.get("schema", {})
    if schema.get("type") == "integer":
        error = {
            "type": "int_parsing",
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "abc",
        }
    elif "maxLength" in schema:
        limit = schema["maxLength"]
        error = {
            "type": "string_too_long",
            "msg": f"String should have at most {limit} characters",
            "input": "x" * (limit + 1),
        }
    else:
        error = {"type": "bool_parsing", "msg": "Input should be a valid boolean", "input": "maybe"}
    return {"detail": [{"loc": [param["in"], param["name"]], **error}]}


def _has_example(media: dict[str, Any], schemas: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    schema = media.get("schema", {})
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
    target = schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else schema
    return "example" in target or "examples" in target


def _list_example(media: dict[str, Any], schemas: dict[str, Any]) -> Any:
    """A list answer's example: one item, the item model's own example."""
    ref = media.get("schema", {}).get("items", {}).get("$ref")
    examples = schemas.get(ref.rsplit("/", 1)[-1], {}).get("examples") if ref else None
    return [examples[0]] if examples else None


def add_examples(doc: dict[str, Any]) -> None:
    """Give every answer of the document an example."""
    schemas = doc.get("components", {}).get("schemas", {})
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                media = content.get("application/json")
                example = OPERATION_EXAMPLES.get((path, status), STATUS_EXAMPLES.get(status))
                if status == "422" and response.get("description") == "Validation Error":
                    example = _validation_example(operation)
                if example is not None and (
                    media is None or ("example" not in media and "examples" not in media)
                ):
                    content.setdefault("application/json", {}).update(example=example)
                    response["content"] = content
                elif media is not None and not _has_example(media, schemas):
                    example = _list_example(media, schemas)
                    if example is not None:
                        media["example"] = example


def install(app: FastAPI) -> None:
    """Post-process the generated document once, when it is first asked for."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_examples(build())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
