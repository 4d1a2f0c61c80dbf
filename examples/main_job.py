"""The main job of `make run`, on a running local stack.

Today it shows the platform's foundation end to end: it uploads the example
pairs dataset through the ingest service (a second upload of the same bytes
reuses the stored version), lists your datasets and shows your private-model
allowance. Training joins it with the fine-tuning text path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent


def distillery(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "distillery"), *args]
    print(f"$ distillery {' '.join(args)}", flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        sys.exit(done.returncode)


def main() -> None:
    distillery("status")
    distillery("datasets", "upload", str(EXAMPLES / "pairs.jsonl"), "--kind", "pairs")
    distillery("datasets", "list")
    distillery("quota")
    print("\nThe stack is up. Stop it with `distillery down` (data stays in $DISTILLERY_HOME, default ~/.distillery).")


if __name__ == "__main__":
    main()
