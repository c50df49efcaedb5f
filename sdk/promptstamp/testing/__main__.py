"""``python -m promptstamp.testing dev [...]``: the same as ``promptstamp-relay dev`` (a local
Langfuse, fake OpenAI and Anthropic APIs and the relay; see ``promptstamp.testing._dev``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m promptstamp.testing dev [--config FILE] [--host HOST] [--langfuse-port N]
       [--openai-port N] [--anthropic-port N] [--otlp-grpc-port N] [--otlp-http-port N] [-v]

commands:
  dev   a local Langfuse, fake OpenAI and Anthropic APIs and the relay, wired together
        (python -m promptstamp.testing dev --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    if args[:1] != ["dev"]:
        print(USAGE, end="", file=sys.stderr)
        return 2
    from promptstamp.testing._dev import main as dev_main

    return dev_main(args[1:], prog="python -m promptstamp.testing dev")


if __name__ == "__main__":
    raise SystemExit(main())
