"""Regenerate beam_zdl/v1/*_pb2.py(i) from protos/beam_zdl/v1/*.proto.

Usage (from anywhere)::

    python scripts/gen_protos.py            # rewrite the checked-in files
    python scripts/gen_protos.py --out DIR  # write DIR/beam_zdl/v1/* instead

``make protos`` runs the first form; ``tests/test_protos.py`` runs the second
and checks the checked-in files are byte-identical, so nobody hand-edits them.
The generated code depends on the protoc bundled with ``grpcio-tools`` (pinned
in pyproject.toml): bump both together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["REPO_ROOT", "PROTO_FILES", "generate"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix()
                     for p in (PROTO_ROOT / "beam_zdl" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every proto under protos/beam_zdl/v1 into ``out_dir``.

    Args:
        out_dir: the folder that receives ``beam_zdl/v1/*_pb2.py`` and ``.pyi``.

    Returns:
        The generated files, sorted.

    Raises:
        RuntimeError: protoc reported an error.
    """
    from grpc_tools import protoc  # only needed here; a test/dev dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", *PROTO_FILES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILES} (see its message above)")
    stems = [Path(p).with_suffix("").name for p in PROTO_FILES]
    return sorted(out_dir / "beam_zdl" / "v1" / f"{s}_pb2{ext}"
                  for s in stems for ext in (".py", ".pyi"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT,
                        help="output root (default: the repository root)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
