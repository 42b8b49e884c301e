"""The build log as a page shows it: internal paths replaced by short labels, and pip's and
Docker's per-package chatter folded into collapsible runs so the lines that matter stand out.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

# A run of at least this many noisy lines is folded; shorter runs read fine as they are.
FOLD_AT = 3

NOISE = re.compile(
    r"^\s*("
    r"Collecting |Downloading |Using cached |Requirement already satisfied|Looking in |"
    r"Processing |Obtaining |Saved |File was already downloaded|Building wheel|"
    r"Created wheel|Stored in directory|Preparing metadata|Installing build dependencies|"
    r"Getting requirements|Attempting uninstall|Found existing installation|Uninstalling |"
    r"Successfully uninstalled|  Downloading|━|---> Running in|---> [0-9a-f]{6,}$|"
    r"Removing intermediate container|Sending build context|\[notice\]"
    r")"
)


def _labels() -> list[tuple[str, str]]:
    """(path, label) pairs, longest path first so a nested path gets its own label."""
    pairs = [
        (settings.PORTAL_WHEELHOUSE, "<wheelhouse>"),
        (settings.PORTAL_ENV_CACHE, "<env-cache>"),
        (settings.PORTAL_ARTIFACT_DIR, "<artifacts>"),
        (settings.PORTAL_DATA_DIR, "<data>"),
        (settings.BASE_DIR, "<portal>"),
        (tempfile.gettempdir(), "<tmp>"),
    ]
    out = [(str(Path(p)), label) for p, label in pairs if p and str(p) not in ("", "/")]
    return sorted(out, key=lambda pair: len(pair[0]), reverse=True)


def hide_paths(text: str) -> str:
    """Replace the portal's own directories (and the temporary build contexts under the
    system's temp dir) by labels: a viewer has no use for the host's layout."""
    for path, label in _labels():
        if label == "<tmp>":
            # The whole temporary directory name is an internal detail, not only its parent.
            text = re.sub(re.escape(path) + r"/[^/\s:'\"]+", label, text)
            text = text.replace(path, label)
        else:
            text = text.replace(path, label)
    return text


@dataclass
class Segment:
    lines: list[str] = field(default_factory=list)
    folded: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def summary(self) -> str:
        return f"{len(self.lines)} lines of pip/docker detail"


def segments(log: str) -> list[Segment]:
    """The log cut into plain runs and foldable runs of noise, in order."""
    out: list[Segment] = []
    for line in hide_paths(log).rstrip("\n").splitlines():
        noisy = bool(NOISE.match(line))
        if out and out[-1].folded == noisy:
            out[-1].lines.append(line)
        else:
            out.append(Segment([line], folded=noisy))
    for seg in out:
        if seg.folded and len(seg.lines) < FOLD_AT:
            seg.folded = False
    merged: list[Segment] = []
    for seg in out:
        if merged and not merged[-1].folded and not seg.folded:
            merged[-1].lines.extend(seg.lines)
        else:
            merged.append(seg)
    return merged
