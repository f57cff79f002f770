"""The command line: help is instant (no torch), options are validated."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lus_pacs.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'synth' in result.output\n"
        "heavy = [m for m in ('torch', 'monai', 'pydicom', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_synth_rejects_an_unknown_zone_scheme() -> None:
    from typer.testing import CliRunner

    from lus_pacs.cli import app

    result = CliRunner().invoke(app, ["synth", "--out", "x", "--zones", "7"])
    assert result.exit_code != 0
    assert "6, 8, 12 or 14" in result.output
