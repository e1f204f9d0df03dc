"""Write docs/config.md, the config reference, from the op registry (so it cannot drift).

    python scripts/config_reference.py            # rewrite docs/config.md
    python scripts/config_reference.py --check    # exit 1 when docs/config.md is out of date
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ckpt.jsonio import write_atomic  # noqa: E402
from ckpt.model.config import reference_markdown  # noqa: E402

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "config.md")


def main():
    text = reference_markdown()
    if "--check" in sys.argv[1:]:
        with open(PATH, encoding="utf-8") as f:
            same = f.read() == text
        print("docs/config.md is up to date" if same else "docs/config.md is out of date: "
              "run python scripts/config_reference.py")
        return 0 if same else 1
    write_atomic(PATH, lambda f: f.write(text))
    print(f"wrote {os.path.normpath(PATH)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
