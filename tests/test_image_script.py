"""The pip settings ``make image-test`` hands to the image build (scripts/image.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _image_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_script", ROOT / "scripts" / "image.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_environment_overrides_the_files_and_local_paths_are_mounted(tmp_path: Path) -> None:
    image = _image_script()
    wheels = tmp_path / "wheels"
    index = tmp_path / "pypi" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    # As pip prints them: each value a Python literal, a multi-line one with its newlines.
    listed = "\n".join(
        [
            "global.find-links='/nowhere/wheels'",
            f"global.extra-index-url='\\nfile://{index}\\nhttps://pypi.example.invalid/simple'",
            "global.timeout='60'",
            "install.no-compile='true'",
            f":env:.find-links='{wheels}'",
            ":env:.timeout='180'",
        ]
    )
    sections = image.pip_options(listed)
    assert sections == {
        "global": {
            "find-links": str(wheels),
            "extra-index-url": f"\nfile://{index}\nhttps://pypi.example.invalid/simple",
            "timeout": "180",
        },
        "install": {"no-compile": "true"},
    }
    conf = image.pip_conf(sections)
    assert (
        f"extra-index-url =\n    file://{index}\n    https://pypi.example.invalid/simple\n" in conf
    )
    assert "[install]\nno-compile = true\n" in conf
    # The index's parent goes along (its pages link to ../../files); remote URLs and paths that
    # do not exist here are not mounted.
    assert image.local_paths(sections) == {wheels, index.parent}
