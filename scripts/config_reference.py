"""Write the config reference page, docs/config.md, from the schema's field descriptions.

Usage: python scripts/config_reference.py [--check] [--smoke]
  (no flag)  write docs/config.md
  --check    exit 1 when docs/config.md is not what the schema gives (CI; a test does the same)
  --smoke    the same as --check (every script has a --smoke size that CI runs)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kseg.config import Config
from kseg.io import atomic_write_text
from kseg.schema.reference import reference_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the page is not current")
    parser.add_argument("--smoke", action="store_true", help="the same as --check")
    args = parser.parse_args()
    text = reference_markdown(Config)
    if args.check or args.smoke:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"{PAGE} is not current; run: python scripts/config_reference.py", file=sys.stderr)
            return 1
        print(f"{PAGE} is current ({len(text.splitlines())} lines)")
        return 0
    atomic_write_text(PAGE, text)
    print(f"wrote {PAGE} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
