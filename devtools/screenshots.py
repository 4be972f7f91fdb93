"""The README's screenshots: the list, the preview and the Storage page, on a laptop
(1366×900) and on a phone (390×844), from the browser tests' own data.

``python -m devtools.screenshots [FOLDER]`` (default: docs/) runs
``tests/test_browser_ui.py::test_the_readme_screenshots_of_the_list_the_preview_and_storage``
with ``HUBIMAGES_SCREENSHOTS=FOLDER``: a real registry with a signed multi-arch release and
older builds, synced, served and driven in Debian's chromium, exactly as the suite does
(where the same test writes them to test-artifacts/ and checks they were made).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_browser_ui.py::test_the_readme_screenshots_of_the_list_the_preview_and_storage"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "docs"))
    folder = Path(parser.parse_args(argv).folder).resolve()
    env = {
        **os.environ,
        "HUBIMAGES_SCREENSHOTS": str(folder),
        "DJANGO_ALLOW_ASYNC_UNSAFE": "true",
    }
    env.setdefault("SECRET_KEY", "screenshots-" + "x" * 40)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST]
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if result.returncode == 0:
        for page in ("list", "preview", "storage"):
            for size in ("laptop", "phone"):
                print(folder / f"{page}-{size}.png")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
