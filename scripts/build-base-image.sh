#!/usr/bin/env bash
# Build the minimal local Docker base image used for model deployments,
# WITHOUT any image registry: the root filesystem comes from debootstrap
# (Debian's package mirror) and is loaded with `docker import`.
#
#   scripts/build-base-image.sh            # build unless the image exists
#   scripts/build-base-image.sh --force    # rebuild even if it exists
#
# Environment:
#   PORTAL_BASE_IMAGE        image tag            (default portal-base:bookworm)
#   PORTAL_DEBIAN_MIRROR     Debian mirror        (default http://deb.debian.org/debian)
#   PORTAL_DEBIAN_SUITE      Debian suite         (default bookworm)
#   PORTAL_DEBOOTSTRAP_CACHE .deb cache dir, ""=off (default /var/cache/portal-debootstrap)
#
# The image holds Debian's python3 (3.11.x, matching cp311 wheels), the venv
# module with its bundled pip/setuptools wheels (ensurepip, so no python3-pip)
# and ca-certificates. Enough for:
#   python3 -m venv /venv && /venv/bin/pip install --no-index --find-links /wheels ...
# Needs root, debootstrap and a running dockerd.
set -euo pipefail

IMAGE="${PORTAL_BASE_IMAGE:-portal-base:bookworm}"
MIRROR="${PORTAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${PORTAL_DEBIAN_SUITE:-bookworm}"
CACHE_DIR="${PORTAL_DEBOOTSTRAP_CACHE-/var/cache/portal-debootstrap}"
PACKAGES="python3,python3-venv,ca-certificates"
IMAGE_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

FORCE=0
case "${1:-}" in
  -f|--force) FORCE=1 ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

say()  { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap)"
command -v docker >/dev/null || die "docker CLI not found (run scripts/services.sh install)"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "docker daemon not reachable (run scripts/services.sh start)"

say "base image $IMAGE"
if [[ $FORCE -eq 0 ]] && image_exists; then
  info "already present"
  exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap not found (run scripts/services.sh install)"

# Serialise concurrent builders; re-check once we hold the lock.
exec 9>/run/lock/portal-base-image.lock
flock 9
if [[ $FORCE -eq 0 ]] && image_exists; then
  info "already present (built concurrently)"
  exit 0
fi

WORK="$(mktemp -d /var/tmp/portal-base.XXXXXX)"
ROOTFS="$WORK/rootfs"

cleanup() {
  local rc=$?
  # debootstrap mounts proc/sys inside the target; never rm -rf across them.
  if [[ -d $WORK ]]; then
    awk -v d="$WORK" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
cache_args=()
if [[ -n $CACHE_DIR ]]; then
  mkdir -p "$CACHE_DIR"
  cache_args=(--cache-dir="$CACHE_DIR")
fi

say "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
if ! debootstrap --variant=minbase --include="$PACKAGES" "${cache_args[@]}" \
      "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 30 "$WORK/debootstrap.log" >&2
  [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
  die "debootstrap failed"
fi
info "done in $((SECONDS - start))s"

PY_VERSION="$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')"
info "python3 in image: $PY_VERSION"

say "trimming rootfs"
# Keep later apt installs inside derived images small as well.
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-portal-minimal" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/01-portal-minimal" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian \
       "$ROOTFS"/usr/share/linda "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# Docker bind-mounts these at run time; do not bake in the host's values.
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"
rm -f "$ROOTFS/etc/machine-id"
info "rootfs: $(du -sh --one-file-system "$ROOTFS" | cut -f1)"

say "docker import -> $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . |
  docker import \
    --change "ENV PATH=$IMAGE_PATH" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL portal.base=1' \
    --change "LABEL portal.python=$PY_VERSION" \
    --change "LABEL portal.debian-suite=$SUITE" \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase + $PACKAGES" \
    - "$IMAGE" >/dev/null

say "verifying $IMAGE"
out="$(docker run --rm --network none "$IMAGE" python3 -c "import venv, ssl; print('ok')")"
[[ $out == ok ]] || die "verification failed: $out"
docker run --rm --network none "$IMAGE" sh -ec \
  'python3 -m venv /tmp/v && /tmp/v/bin/pip --version' >/dev/null \
  || die "verification failed: python3 -m venv / pip"
info "python3 -m venv + pip ok"

size_bytes="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
info "image $IMAGE: $((size_bytes / 1024 / 1024)) MiB ($size_bytes bytes), python $PY_VERSION, built in $((SECONDS - start))s"
