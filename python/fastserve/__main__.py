"""Run the installed fastserve binary: `python -m fastserve ARGS` equals `fastserve ARGS`.

The process is replaced with the binary (`os.execv`), so signals and the exit status
pass straight through.
"""

from __future__ import annotations

import os
import sys

from fastserve import find_binary


def main() -> None:
    """Replace this process with the fastserve binary, passing on the arguments."""
    try:
        binary = find_binary()
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()
