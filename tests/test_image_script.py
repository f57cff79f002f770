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
    listed = "\n".join(
        [
            "global.find-links='/nowhere/wheels'",
            f"global.extra-index-url='file://{index} https://pypi.example.invalid/simple'",
            "global.timeout='60'",
            f":env:.find-links='{wheels}'",
            ":env:.timeout='180'",
        ]
    )
    options = image.pip_options(listed)
    assert options == {
        "find-links": str(wheels),
        "extra-index-url": f"file://{index} https://pypi.example.invalid/simple",
        "timeout": "180",
    }
    # The index's parent goes along (its pages link to ../../files); remote URLs and paths that
    # do not exist here are not mounted.
    assert image.local_paths(options) == {wheels, index.parent}
