"""Bundles: atomic writes, checksums on load, versioned directories and an atomic `current` pointer."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from recsys.bundle import (
    FORMAT_VERSION,
    Manifest,
    new_version_path,
    publish,
    read_bundle,
    resolve,
    sha256_file,
    verify,
    write_bundle,
)
from recsys.data import IdMap
from recsys.exceptions import BundleError
from recsys.models import Popularity, load


@pytest.fixture()
def bundle(synthetic, tmp_path):
    return Popularity().fit(synthetic).save(tmp_path / "b1", metrics={"ndcg@10": 0.5})


def test_manifest_describes_every_file(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"]["class"] == "popularity"
    assert manifest["metrics"] == {"ndcg@10": 0.5}
    on_disk = {p.name for p in bundle.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, info in manifest["files"].items():
        assert info["sha256"] == sha256_file(bundle / name)
    assert not list(bundle.glob("*.pkl")) and not list(bundle.glob("*.pt"))


@pytest.mark.parametrize("name", ["arrays.safetensors", "items.json", "items.parquet", "users.json"])
def test_one_flipped_byte_fails_with_the_file_named(bundle, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"Checksum mismatch for {name}"):
        load(bundle)


def test_missing_file_is_named(bundle):
    (bundle / "users.json").unlink()
    with pytest.raises(BundleError, match="missing users.json"):
        read_bundle(bundle)


def test_the_manifest_is_typed_and_round_trips(bundle):
    manifest = verify(bundle)
    assert isinstance(manifest, Manifest)
    assert (manifest.model_class, manifest.metrics, manifest.foldin.method) == ("popularity", {"ndcg@10": 0.5},
                                                                            "constant")
    assert manifest.n_users == read_bundle(bundle).users.__len__() and manifest.factors == 1
    raw = json.loads((bundle / "manifest.json").read_text())
    assert manifest.to_dict() == raw, "what is read is what was written, key for key"
    assert Manifest.from_dict(raw) == manifest


def test_a_malformed_manifest_is_refused_with_the_bundle_named(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["model"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest of bundle .*b1.* is malformed \(KeyError"):
        verify(bundle)
    (bundle / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="is not a JSON object"):
        verify(bundle)


def test_unknown_format_version_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load(bundle)


def test_unsafe_file_names_in_manifest_are_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../escape"] = {"sha256": "0", "bytes": 0}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unsafe"):
        verify(bundle)


def test_existing_directory_is_never_overwritten(bundle, synthetic):
    before = sha256_file(bundle / "arrays.safetensors")
    with pytest.raises(BundleError, match="already exists"):
        Popularity().fit(synthetic).save(bundle)
    assert sha256_file(bundle / "arrays.safetensors") == before


def test_failed_write_leaves_nothing_behind(tmp_path):
    users, items = IdMap(["u"]), IdMap(["i"])
    with pytest.raises(TypeError, match="Cannot store object in a bundle manifest"):
        write_bundle(tmp_path / "b", arrays={"x": np.zeros(1)}, users=users, items=items,
                     manifest=Manifest(model_class="x", params={"bad": object()}, factors=1))
    assert list(tmp_path.iterdir()) == []


def test_publish_moves_current_atomically_and_keeps_old_versions(synthetic, tmp_path):
    root = tmp_path / "models"
    first = Popularity().fit(synthetic).save(new_version_path(root, "pop"))
    publish(root, first)
    second_path = new_version_path(root, "pop")
    assert second_path != first
    second = Popularity(use_weights=True).fit(synthetic).save(second_path)
    publish(root, second)
    assert os.readlink(root / "current") == second.name, "relative link: the root can move"
    assert first.exists()
    assert load(root).get_params() == {"use_weights": True}
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_publish_refuses_a_corrupt_bundle_and_keeps_the_old_pointer(synthetic, tmp_path):
    root = tmp_path / "models"
    good = Popularity().fit(synthetic).save(new_version_path(root, "pop"))
    publish(root, good)
    bad = Popularity().fit(synthetic).save(new_version_path(root, "pop"))
    (bad / "items.json").write_text("[]")
    with pytest.raises(BundleError):
        publish(root, bad)
    assert resolve(root) == good.resolve()


def test_resolve_explains_what_is_missing(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        resolve(tmp_path / "nope")
    with pytest.raises(BundleError, match="not a bundle"):
        resolve(tmp_path)
