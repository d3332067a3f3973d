"""The OpenAPI document as a manual: the bearer scheme on the write operations only, the
file format (the grammar written once) on the upload, an example for every answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from shared.fileformat.promotion_rows import DATE_GRAMMAR

DOCS = Path(__file__).resolve().parents[2] / "docs" / "file-format.md"
WRITES = {("post", "/add-promotions/"), ("post", "/uploadfile/")}
WRITES |= {("post", "/datasets/{version}/activate")}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app().openapi()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


# Open to anyone (docs/security.md): the lookup and the probes.
PUBLIC = {("get", "/promotions/{promotion_id}"), ("get", "/healthz"), ("get", "/readyz")}


def test_guarded_operations_declare_the_bearer_scheme_and_public_ones_do_not(
    doc: dict[str, Any],
) -> None:
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    operations = {(m, p) for m, p, _ in _operations(doc)}
    assert operations >= WRITES and operations >= PUBLIC
    for method, path, op in _operations(doc):
        expected = None if (method, path) in PUBLIC else [{"bearer": []}]
        assert op.get("security") == expected, (method, path)


def test_the_grammar_is_written_once_and_shown_in_the_docs_and_on_the_upload(
    doc: dict[str, Any],
) -> None:
    assert f"```\n{DATE_GRAMMAR}```" in DOCS.read_text()
    for path in ("/add-promotions/", "/uploadfile/"):
        text = doc["paths"][path]["post"]["description"]
        assert DATE_GRAMMAR in text and "MAX_UPLOAD_BYTES" in text and "REJECT_RATIO" in text


# Answers that carry no body (HTTP): nothing to show, and nothing may be declared.
BODYLESS = {"204", "304"}


def test_every_answer_has_an_example(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for method, path, op in _operations(doc):
        for status, response in op["responses"].items():
            if status in BODYLESS:
                assert not response.get("content"), (method, path, status)
                continue
            examples = []
            for media in response.get("content", {}).values():
                schema = media.get("schema", {})
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                target = schemas[ref.rsplit("/", 1)[-1]] if ref else schema
                examples += [media.get("example"), media.get("examples"), target.get("examples")]
            assert any(e for e in examples), (method, path, status)
    upload = doc["paths"]["/add-promotions/"]["post"]["responses"]
    assert "Bearer" in upload["401"]["content"]["application/json"]["example"]["detail"]


def test_examples_say_what_each_operation_answers(doc: dict[str, Any]) -> None:
    """A generic sentence where the operation means something else would mislead."""
    for method, path, op in _operations(doc):
        params = {(p["in"], p["name"]) for p in op.get("parameters", [])}
        invalid = op["responses"].get("422", {})
        if invalid.get("description") == "Validation Error":
            example = invalid["content"]["application/json"]["example"]
            assert tuple(example["detail"][0]["loc"]) in params, (method, path)
    paths = doc["paths"]
    assert (
        "no dataset"
        in paths["/datasets/active"]["get"]["responses"]["404"]["content"]["application/json"][
            "example"
        ]["detail"]
    )
    activate = paths["/datasets/{version}/activate"]["post"]["responses"]["409"]
    assert "does not exist" in activate["content"]["application/json"]["example"]["detail"]
