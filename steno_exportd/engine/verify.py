"""Check a target against its SHA256SUMS and manifest: missing, changed and extra files."""
from __future__ import annotations

import dataclasses
import os

from steno_exportd.engine import manifest as mf
from steno_exportd.engine import writer
from steno_exportd.engine.naming import ROOT_FALLBACK
from steno_exportd.engine.targets import DirectoryTarget, Target
from steno_exportd.errors import TargetError


@dataclasses.dataclass
class VerifyReport:
    ok_count: int = 0
    changed: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.problems)

    def to_json(self) -> dict:
        return dict(ok=self.ok, verified=self.ok_count, changed=self.changed, missing=self.missing,
                    extra=self.extra, problems=self.problems)


def verify_target(path: str | Target, root: str = ROOT_FALLBACK, mark: bool = False) -> VerifyReport:
    """Hash every file SHA256SUMS and the manifest name (paths relative to root)."""
    if isinstance(path, str):
        if os.path.basename(os.path.normpath(path)) == root and not os.path.isdir(os.path.join(path, root)):
            path = os.path.dirname(os.path.normpath(path)) or "."
        t: Target = DirectoryTarget(path)
    else:
        t = path
    rep = VerifyReport()
    st = t.lstat(root)
    if st is None or st.kind != "dir":
        raise TargetError(f"no {root}/ folder on {t.name}")
    try:
        sums = mf.read_sums(t, root)
    except TargetError as e:
        sums = {}
        rep.problems.append(f"{mf.SUMS}: {e}")
    m = mf.load(t, root)
    if m.rebuilt:
        rep.problems.append(f"{mf.MANIFEST} missing or unusable")
    expected = dict(sums)
    for rel, f in m.owned_paths().items():
        if rel in expected and f.get("sha256") and expected[rel] != f["sha256"]:
            rep.problems.append(f"{rel}: SHA256SUMS and manifest disagree")
        expected.setdefault(rel, f.get("sha256", ""))
    bad: set[str] = set()
    for rel in sorted(expected):
        st = t.lstat(f"{root}/{rel}")
        if st is None:
            rep.missing.append(rel)
            continue
        if st.kind != "file":
            rep.changed.append(rel)
            bad.add(rel)
            continue
        _, sha = writer.read_back(t, f"{root}/{rel}")
        if sha != expected[rel]:
            rep.changed.append(rel)
            bad.add(rel)
        else:
            rep.ok_count += 1
    folders = {rel.split("/", 1)[0] for rel in expected}
    for folder in sorted(folders):
        st = t.lstat(f"{root}/{folder}")
        if st is None or st.kind != "dir":
            continue
        for name in t.listdir(f"{root}/{folder}"):
            if f"{folder}/{name}" not in expected:
                rep.extra.append(f"{folder}/{name}")
    if mark and bad and not m.rebuilt:
        for s in m.sessions.values():
            for name, f in s["files"].items():
                if f"{s['folder']}/{name}" in bad:
                    f["bad"] = True
        try:
            mf.save(t, root, m)
        except TargetError as e:
            rep.problems.append(f"could not flag changed files in the manifest: {e}")
    return rep
