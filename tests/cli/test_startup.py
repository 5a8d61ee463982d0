"""`featureloc --help` and the command table load no heavy module: each command imports what it
needs when it runs (the startup time itself is measured by hand, not in a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import REPO

# Each of these costs from tens of milliseconds to seconds to import.
HEAVY = ("torch", "cv2", "kornia", "numpy", "celery", "sqlalchemy", "alembic", "fastapi",
         "pydantic_settings", "redis")  # fmt: skip


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_the_command_table_and_help_import_nothing_heavy():
    help_run = (
        "import sys\nfrom cli.main import app\nsys.argv = ['featureloc', '--help']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    loaded = _loaded_after(help_run)
    assert "cli.main" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []
