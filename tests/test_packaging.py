"""The properties folder ships inside the wheel, so a non-editable install finds it."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_ships_properties(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = tmp_path.glob("recbole_perpeft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "recbole_perpeft/properties/overall.yaml" in names
    assert any(n.startswith("recbole_perpeft/properties/model/") for n in names)
