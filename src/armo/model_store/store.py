"""The versioned model store on disk.

    <root>/<model>/<version>/manifest.json      schema-versioned manifest with sha256 of every other file
    <root>/<model>/<version>/heads.safetensors  ArmoHead state dict (never pickle)
    <root>/<model>/aliases/<alias>.json         {"version": ..., "history": [older versions, newest first]}

Publishing writes a hidden temporary directory, fsyncs it, then renames it into place: a version directory
either exists complete or not at all. Aliases are replaced with os.replace under a per-model file lock, so
concurrent promotes never leave a torn alias and rollback history stays consistent.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from armo.model_store import atomic
from armo.model_store.bundled import DEFAULT_ALIAS
from armo.model_store.errors import ArtifactError, StoreError
from armo.model_store.heads import ArmoHead
from armo.model_store.identity import is_store_relative, store_relative_id
from armo.model_store.manifest import (
    HEADS_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Manifest,
    PrecisionAgreement,
    sha256_file,
)

ALIASES_DIR = "aliases"


class _Alias(TypedDict):
    version: str
    history: list[str]  # previous targets, newest first


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value) or value == ALIASES_DIR:
        raise StoreError(f"invalid {kind} name {value!r} (letters, digits, '.', '_', '-')", field=kind)
    return value


class ModelStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- reading ------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, model: str) -> list[str]:
        d = self.root / _check_name("model", model)
        if not d.is_dir():
            return []
        return sorted(
            p.name
            for p in d.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p.name != ALIASES_DIR
        )

    def aliases(self, model: str) -> dict[str, str]:
        d = self.root / _check_name("model", model) / ALIASES_DIR
        if not d.is_dir():
            return {}
        return {p.stem: self._read_alias(p)["version"] for p in sorted(d.glob("*.json"))}

    def version_dir(self, model: str, version: str) -> Path:
        return self.root / _check_name("model", model) / _check_name("version", version)

    def resolve(self, model: str, ref: str = DEFAULT_ALIAS) -> str:
        """A version name or an alias → a version name that exists."""
        alias_file = self.root / _check_name("model", model) / ALIASES_DIR / f"{_check_name('alias', ref)}.json"
        version = self._read_alias(alias_file)["version"] if alias_file.is_file() else ref
        if not self.version_dir(model, version).is_dir():
            raise StoreError(f"no version or alias {ref!r} for model {model!r} in the store", field="version")
        return version

    def _shown(self, path: Path) -> str:
        """A store path as messages show it: relative to the store root (responses never show absolute paths)."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else path.name

    def read_manifest(self, model: str, version: str) -> Manifest:
        d = self.version_dir(model, version)
        path = d / MANIFEST_FILE
        if d.is_symlink():
            raise ArtifactError(f"{self._shown(d)}: a version folder may not be a symbolic link", field="version")
        if not path.is_file():
            raise ArtifactError(
                f"{self._shown(path)}: missing {MANIFEST_FILE} (partial or foreign directory)", field=MANIFEST_FILE
            )
        try:
            manifest = Manifest.read(path)
        except ValueError as e:
            raise ArtifactError(f"{self._shown(path)}: invalid manifest: {e}", field=MANIFEST_FILE) from e
        if manifest.schema_version > SCHEMA_VERSION:
            raise ArtifactError(
                f"{self._shown(path)}: schema version {manifest.schema_version} is newer than this code "
                f"({SCHEMA_VERSION})"
            )
        if (manifest.model, manifest.version) != (model, version):
            # A copied folder would otherwise be served under one name and report another (and be reloaded forever).
            raise ArtifactError(
                f"{self._shown(path)}: the folder is {model}/{version} but the manifest says "
                f"{manifest.model}/{manifest.version}",
                field="version",
            )
        return manifest

    def verify(self, model: str, version: str) -> Manifest:
        """Check the manifest and the sha256 of every file it lists; raise ArtifactError naming the bad file."""
        manifest = self.read_manifest(model, version)
        d = self.version_dir(model, version)
        if HEADS_FILE not in manifest.files:
            raise ArtifactError(f"{self._shown(d / MANIFEST_FILE)}: does not list {HEADS_FILE}", field=HEADS_FILE)
        delta = manifest.backbone_delta
        if delta is not None and manifest.files.get(delta.file) != delta.sha256:
            raise ArtifactError(
                f"{self._shown(d / MANIFEST_FILE)}: the backbone delta {delta.file} is not listed with its sha256",
                field="backbone_delta",
            )
        for name, digest in manifest.files.items():
            f = d / name
            if Path(name).name != name or name in (".", "..") or f.is_symlink():
                raise ArtifactError(
                    f"{self._shown(d / MANIFEST_FILE)}: {name!r} is not a plain file of the version folder",
                    field="files",
                )
            if not f.is_file():
                raise ArtifactError(f"{self._shown(f)}: file listed in the manifest is missing", field=name)
            if sha256_file(f) != digest:
                raise ArtifactError(f"{self._shown(f)}: sha256 mismatch (corrupt or modified file)", field=name)
        return manifest

    def load(self, model: str, ref: str = DEFAULT_ALIAS) -> tuple[Manifest, ArmoHead]:
        """Verify and load the heads of `model` at version or alias `ref`."""
        version = self.resolve(model, ref)
        manifest = self.verify(model, version)
        path = self.version_dir(model, version) / HEADS_FILE
        head = ArmoHead(manifest.backbone.hidden_size, len(manifest.objectives), manifest.gating_config())
        try:
            head.load_state_dict(load_file(str(path)), strict=True)
        except (RuntimeError, SafetensorError) as e:
            raise ArtifactError(f"{self._shown(path)}: weights do not match the manifest: {e}", field=HEADS_FILE) from e
        return manifest, head.eval()

    # -- writing ------------------------------------------------------------------------------------------
    @contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        d = self.root / _check_name("model", model)
        d.mkdir(parents=True, exist_ok=True)
        with (d / ".lock").open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def state_precision(self, model: str, version: str, dtype: str, agreement: PrecisionAgreement) -> Manifest:
        """Record the agreement measured for serving `version` in `dtype`: the one part of a published manifest that
        may change (the heads, objectives and files stay as published; the manifest is replaced atomically)."""
        with self._lock(model):
            manifest = self.verify(model, version)
            agreements = {**manifest.precision.agreement, dtype: agreement}
            precision = manifest.precision.model_copy(update={"agreement": agreements})
            updated = manifest.model_copy(update={"precision": precision})
            atomic.write_bytes(self.version_dir(model, version) / MANIFEST_FILE, updated.to_json().encode())
        return updated

    def publish(
        self,
        manifest: Manifest,
        head: ArmoHead,
        *,
        extra_files: Mapping[str, bytes] | None = None,
        alias: str | None = DEFAULT_ALIAS,
    ) -> Path:
        """Write a complete version atomically, then (optionally) point `alias` at it. A backbone in a local
        directory is recorded by its path relative to the store root (identity.store_relative_id): an absolute path
        would pin the version to the machine that trained it."""
        model, version = _check_name("model", manifest.model), _check_name("version", manifest.version)
        backbone = manifest.backbone
        if not is_store_relative(backbone.id) and Path(backbone.id).is_dir():
            local = backbone.model_copy(update={"id": store_relative_id(Path(backbone.id), self.root)})
            manifest = manifest.model_copy(update={"backbone": local})
        if len(manifest.objectives) != head.n_objectives or manifest.backbone.hidden_size != head.hidden_size:
            raise StoreError("manifest objectives / hidden size do not match the head", field="manifest")
        model_dir = self.root / model
        model_dir.mkdir(parents=True, exist_ok=True)
        target = model_dir / version
        if target.exists():
            raise StoreError(f"version {model}/{version} already exists", field="version")

        def fill(tmp: Path) -> None:
            state = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
            save_file(state, str(tmp / HEADS_FILE), metadata={"model": model, "version": version})
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            (tmp / MANIFEST_FILE).write_text(manifest.model_copy(update={"files": files}).to_json(), encoding="utf-8")

        try:
            atomic.write_dir(target, fill)
        except FileExistsError as e:  # a concurrent publisher got there first
            raise StoreError(f"version {model}/{version} already exists", field="version") from e
        if alias is not None:
            self.promote(model, version, alias)
        return target

    def _read_alias(self, path: Path) -> _Alias:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return _Alias(version=str(data["version"]), history=[str(v) for v in data.get("history", [])])
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise StoreError(f"{self._shown(path)}: unreadable alias file: {e}", field="alias") from e

    def promote(self, model: str, version: str, alias: str = DEFAULT_ALIAS) -> None:
        """Point `alias` at `version` (which must verify), remembering the previous target for rollback."""
        self.verify(model, version)
        with self._lock(model):
            d = self.root / model / ALIASES_DIR
            d.mkdir(exist_ok=True)
            path = d / f"{_check_name('alias', alias)}.json"
            history: list[str] = []
            if path.is_file():
                old = self._read_alias(path)
                history = [old["version"], *old["history"]]
                if history[0] == version:
                    return
            atomic.write_bytes(path, json.dumps({"version": version, "history": history[:50]}).encode())

    def rollback(self, model: str, alias: str = DEFAULT_ALIAS) -> str:
        """Point `alias` back at its previous version; returns that version."""
        with self._lock(model):
            path = self.root / model / ALIASES_DIR / f"{_check_name('alias', alias)}.json"
            if not path.is_file():
                raise StoreError(f"alias {model}/{alias} does not exist", field="alias")
            history = self._read_alias(path)["history"]
            if not history:
                raise StoreError(f"alias {model}/{alias} has no previous version to roll back to", field="alias")
            previous = history[0]
            self.verify(model, previous)
            atomic.write_bytes(path, json.dumps({"version": previous, "history": history[1:]}).encode())
            return previous
