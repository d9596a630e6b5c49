"""exported/: the shipped .pte files and hotdog.json (what `make mar` packs and the iOS app bundles) must be
those `make export` writes from the shipped weights/ with the current exporter."""
import json
import re

import pytest

from conftest import REPO
from mobile_export import export
from model_src.bundle import read_manifest

EXPORTED = REPO / "exported"


@pytest.fixture(scope="module")
def metadata():
    return json.loads((EXPORTED / export.METADATA_FILE).read_text())


def test_the_shipped_programs_come_from_the_shipped_weights_and_the_current_exporter():
    """Weights sha256, each program's sha256 and the exporter fingerprint (settings, versions, sources)."""
    meta = export.verify_exported(EXPORTED, read_manifest(REPO / "weights"))
    assert set(meta["programs"]) == {"xnnpack_fp32", "xnnpack_int8", "coreml"}
    assert meta["exporter"]["settings"] == export.exporter_settings()


def test_re_exporting_the_fp32_program_from_the_shipped_weights_gives_the_shipped_bytes(metadata, tmp_path):
    """The fingerprint could only record what the exporter says about itself: lowering again must give
    the same file. (int8 needs the training photos to calibrate on, which a clone does not have.)"""
    from model_src.bundle import load_bundle

    model, spec, _ = load_bundle(REPO / "weights")
    wrapper = export.MobileClassifier(model, spec).eval()
    program = export.lower_xnnpack(export.export_program(wrapper, spec, metadata["input"]["batch"]["max"]))
    assert program.buffer == (EXPORTED / export.FP32_FILE).read_bytes()


def test_the_ios_app_bundles_the_shipped_programs(metadata):
    project = (REPO / "mobile_export" / "ios" / "project.yml").read_text()
    bundled = set(re.findall(r"path: \.\./\.\./exported/(\S+)", project))
    assert bundled == {export.METADATA_FILE, *(p["file"] for p in metadata["programs"].values())}
