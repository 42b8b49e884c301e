"""Namespaces, a read-only root and an unprivileged uid: the containment shared by the
validation sandbox (:mod:`models_app.validation.sandbox`) and the ``process`` runtime's
replicas (:mod:`deployments_app.runtimes.process_runtime`).

:func:`isolation` detects once what the host allows (``namespaces``, ``userns`` or
``none``); :func:`rootfs_argv` builds the command that runs a program in fresh mount, PID
and network namespaces, chrooted into a minimal read-only root, as an unprivileged uid
with no capabilities and no_new_privs.  The sandbox's docstring describes the layout.

No Django here: plain paths and arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["isolation", "rootfs_argv"]

# The launcher run inside fresh mount+pid+net namespaces, as root: build a minimal
# read-only root, then run the command in it as an unprivileged uid.  The command
# is not exec'ed: this shell stays PID 1 of the namespace, so the model's Python is
# an ordinary process (CPU-limit signals work) and when the shell goes, all go.
# /tmp, /proc and /dev come first so that an environment kept under /tmp is bound
# on top of the sandbox's own /tmp rather than hidden by it.  After the `n` read-only
# binds, `--rw SRC DST` pairs (the process runtime's socket directory) are bound
# writable (no exec, no devices, no setuid) before the root is made read-only.
ROOTFS_SCRIPT = r"""
set -eu
umask 022
chroot=$1; new=$2; indir=$3; work=$4; uid=$5; n=$6; shift 6
mount -t tmpfs -o mode=0755,size=8m,nosuid,nodev sandbox-root "$new"
mkdir -p "$new/sandbox/in" "$new/sandbox/work" "$new/tmp" "$new/proc" "$new/dev"
mount -t tmpfs -o mode=1777,size=16m,nosuid,nodev sandbox-tmp "$new/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$new/proc"
for f in null zero random urandom; do
  touch "$new/dev/$f"
  mount --bind "/dev/$f" "$new/dev/$f"
done
for d in /usr /etc /bin /sbin /lib /lib32 /lib64 /libx32; do
  if [ -L "$d" ]; then
    ln -s "$(readlink "$d")" "$new$d"
  elif [ -d "$d" ]; then
    mkdir -p "$new$d"
    mount --rbind "$d" "$new$d"
    mount -o remount,bind,ro,nosuid,nodev "$new$d"
  fi
done
i=0
while [ "$i" -lt "$n" ]; do
  p=$1; shift; i=$((i + 1))
  mkdir -p "$new$p"
  mount --bind "$p" "$new$p"
  mount -o remount,bind,ro,nosuid,nodev "$new$p"
done
while [ "$1" = "--rw" ]; do
  mkdir -p "$new$3"
  mount --bind "$2" "$new$3"
  mount -o remount,bind,nosuid,nodev,noexec "$new$3"
  shift 3
done
mount --bind "$indir" "$new/sandbox/in"
mount -o remount,bind,ro,nosuid,nodev "$new/sandbox/in"
mount -t tmpfs -o "size=32m,mode=0700,uid=$uid,gid=$uid,nosuid,nodev" sandbox-work \
  "$new/sandbox/work"
mount -o remount,ro,nosuid,nodev "$new"
"$chroot" "$new" /usr/bin/env -C /sandbox/work /usr/bin/setpriv \
  --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
  --inh-caps=-all --bounding-set=-all -- "$@"
"""

UNSHARE_ROOT = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"]
UNSHARE_USER = [
    "unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
    "--mount-proc",
]  # fmt: skip
NO_EXEC_SH = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]

_isolation_cache: dict[str, Any] | None = None


def rootfs_argv(
    *,
    chroot: str,
    newroot: str | os.PathLike[str],
    indir: str | os.PathLike[str],
    work: str | os.PathLike[str],
    uid: int,
    ro_binds: Sequence[str],
    command: Sequence[str],
    rw_binds: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The argv running `command` in new namespaces under a read-only root as `uid`.

    `indir` appears read-only at /sandbox/in, `ro_binds` read-only at their own paths,
    each `(host, inside)` of `rw_binds` writable at `inside`; /sandbox/work and /tmp are
    small private tmpfs.  `newroot` is an empty directory used as the mount point."""
    rw: list[str] = []
    for host, inside in rw_binds:
        rw += ["--rw", str(host), str(inside)]
    return [
        *UNSHARE_ROOT, "/bin/sh", "-c", ROOTFS_SCRIPT, "sh", chroot, str(newroot), str(indir),
        str(work), str(uid), str(len(ro_binds)), *ro_binds, *rw, *command,
    ]  # fmt: skip


def _probe(cmd: list[str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-300:]


SYSTEM_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def isolation(refresh: bool = False) -> dict[str, Any]:
    """Detect, once, which isolation this host allows: namespaces, userns or none."""
    global _isolation_cache
    if _isolation_cache is not None and not refresh:
        return _isolation_cache
    notes: list[str] = []
    mode = "none"
    # chroot lives in /usr/sbin, which a service's or `env -i` PATH may lack: look there too.
    search = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_BIN_DIRS])
    have = {t: shutil.which(t, path=search) for t in ("unshare", "setpriv", "chroot")}
    missing = [t for t, found in have.items() if not found]
    if os.geteuid() == 0 and missing:
        notes.append(f"not found on this host: {', '.join(missing)} (util-linux, coreutils)")
    if os.geteuid() == 0 and not missing:
        with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as tmp:
            new, indir, work, rw = (Path(tmp) / d for d in ("root", "in", "work", "rw"))
            for d in (new, indir, work, rw):
                d.mkdir()
            ok, msg = _probe(
                rootfs_argv(
                    chroot=str(have["chroot"]),
                    newroot=new,
                    indir=indir,
                    work=work,
                    uid=65534,
                    ro_binds=[],
                    rw_binds=[(str(rw), "/run/probe")],
                    command=["/usr/bin/true"],
                )
            )
        if ok:
            mode = "namespaces"
        else:
            notes.append(f"mount/pid/net namespaces unavailable as root: {msg}")
    if mode == "none" and have["unshare"]:
        ok, msg = _probe([*UNSHARE_USER, "/bin/true"])
        if ok:
            mode = "userns"
        else:
            notes.append(f"unprivileged user namespaces unavailable: {msg}")
    if mode == "none":
        if not have["unshare"]:
            notes.append("util-linux unshare not found")
        notes.append("network NOT cut off; only resource limits and a new session apply")
    _isolation_cache = {
        "mode": mode,
        "network_cut": mode != "none",
        "pid_namespace": mode != "none",
        "private_filesystem": mode == "namespaces",
        "unprivileged_uid": mode == "namespaces",
        "notes": notes,
        "chroot": have["chroot"],
    }
    return _isolation_cache


def uid_task_count(uid: int) -> int:
    """Processes + threads of ``uid`` (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                count += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue
    return count


def base_prefix(env_python: Path) -> Path:
    """Installation prefix of the interpreter a venv was made from."""
    cfg = env_python.parent.parent / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).resolve().parent
    return Path(os.path.realpath(env_python)).parent.parent
