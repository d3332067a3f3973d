"""``promotions`` command: generate test files, ingest a file into a running stack."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.generate import generate
from cli.ingest import ingest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promotions")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write N rows in the partner CSV format")
    gen.add_argument("rows", type=int)
    gen.add_argument("file", type=Path)
    gen.add_argument("--bad-ratio", type=float, default=0.0, help="share of invalid rows")
    gen.add_argument("--duplicate-ratio", type=float, default=0.0, help="share of repeated ids")
    gen.add_argument("--gzip", action="store_true", help="write gzip-compressed")
    gen.add_argument("--seed", type=int, default=None)

    ing = sub.add_parser("ingest", help="upload a file and follow its job until it ends")
    ing.add_argument("file", type=Path)
    ing.add_argument("--url", default=os.environ.get("PROMOTIONS_URL", "http://127.0.0.1:1321"))
    ing.add_argument("--token", default=os.environ.get("WRITE_TOKEN"))

    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(
            args.rows,
            args.file,
            bad_ratio=args.bad_ratio,
            duplicate_ratio=args.duplicate_ratio,
            compress=args.gzip,
            seed=args.seed,
        )
        return 0
    return ingest(args.file, args.url, args.token)


if __name__ == "__main__":
    sys.exit(main())
