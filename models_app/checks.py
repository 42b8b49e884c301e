"""Startup and readiness checks of artifact encryption at rest.

`manage.py check` (and so `runportal`, `migrate`, every command that runs system checks)
stops with an error when the master key is missing or malformed (ImproperlyConfigured from
the key provider), when stored artifacts are wrapped under a key this portal does not have
(a wrong PORTAL_ARTIFACT_KEY), or when plaintext artifacts from before encryption remain.
The readiness check (/health/ready) says the same from a bounded sample of headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core import checks

from models_app import storage
from models_app.keyprovider import ArtifactKeyError, get_provider
from models_app.validation import artifact_cipher as cipher

READINESS_SAMPLE = 200


@dataclass
class KeyReport:
    key_id: str
    scanned: int = 0
    plaintext: list[str] = field(default_factory=list)
    unknown: dict[str, int] = field(default_factory=dict)  # key id -> artifacts
    unreadable: list[str] = field(default_factory=list)  # wrapped key does not open
    by_key: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.plaintext or self.unknown or self.unreadable)

    def problems(self) -> list[tuple[str, str]]:
        """(check id, message) of each problem found."""
        out = []
        if self.unknown:
            ids = ", ".join(f"{k} ({n})" for k, n in sorted(self.unknown.items()))
            out.append(
                (
                    "models_app.E001",
                    f"stored artifacts are encrypted under master key(s) {ids} that are not "
                    f"configured (this portal's key is {self.key_id}): wrong PORTAL_ARTIFACT_KEY? "
                    "During a rotation set the old one in PORTAL_ARTIFACT_KEY_PREVIOUS",
                )
            )
        if self.unreadable:
            out.append(
                (
                    "models_app.E002",
                    f"{len(self.unreadable)} artifact header(s) do not open with their key "
                    f"(altered?): {', '.join(s[:12] for s in self.unreadable[:5])}",
                )
            )
        if self.plaintext:
            out.append(
                (
                    "models_app.E003",
                    f"{len(self.plaintext)} artifact(s) are stored in plaintext (written before "
                    "encryption at rest): run `manage.py encrypt_artifacts`",
                )
            )
        return out


def artifact_key_report(limit: int | None = None) -> KeyReport:
    """Read the headers of the store (at most `limit` of them) against the configured keys."""
    provider = get_provider()  # ImproperlyConfigured: missing or malformed key
    report = KeyReport(key_id=provider.key_id)
    tried: set[str] = set()
    for sha in storage.iter_artifact_shas():
        if limit is not None and report.scanned >= limit:
            break
        report.scanned += 1
        try:
            header = storage.artifact_header(sha)
        except storage.ArtifactUnreadable:
            report.unreadable.append(sha)
            continue
        except FileNotFoundError:
            continue
        if header is None:
            report.plaintext.append(sha)
            continue
        report.by_key[header.key_id] = report.by_key.get(header.key_id, 0) + 1
        if not provider.knows(header.key_id):
            report.unknown[header.key_id] = report.unknown.get(header.key_id, 0) + 1
        elif header.key_id not in tried:  # one real unwrap per key: proves it is this key
            tried.add(header.key_id)
            try:
                provider.unwrap(header.key_id, header.wrapped_key)
            except (ArtifactKeyError, cipher.ArtifactCipherError):
                report.unreadable.append(sha)
    return report


@checks.register("models_app")
def check_artifact_encryption(app_configs=None, **kwargs):
    report = artifact_key_report()
    hint = "docs/OPERATIONS.md, 'Artifact encryption key'"
    return [checks.Error(msg, hint=hint, id=check_id) for check_id, msg in report.problems()]


def readiness() -> tuple[bool, str]:
    report = artifact_key_report(limit=READINESS_SAMPLE)
    if not report.ok:
        return False, "; ".join(msg for _id, msg in report.problems())
    return True, f"key {report.key_id}; {report.scanned} artifact header(s) checked"
