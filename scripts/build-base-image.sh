#!/usr/bin/env bash
# The base "VM" image: Debian with systemd as PID 1, python3, sudo and
# openssh-server, made by debootstrap and `docker import` (no registry can be
# pulled from). Tagged with the recipe's content hash: a changed recipe
# rebuilds, an unchanged one is reused. Prints the image reference.
# Docker 20.10 cannot set STOPSIGNAL at import: whoever runs the image passes
# --stop-signal SIGRTMIN+3 (molecule/_shared/create.yml does).
. "$(dirname "$0")/lib.sh"
hold_lock base-image

# The rootfs depends on the package list, the configure step and the suite;
# the image tag also on how this script imports it.
rootfs_version=$(content_hash "$FF_ROOT/images/base/packages.txt" "$FF_ROOT/images/base/configure.sh" \
  <(grep '^BASE_' "$FF_ROOT/versions.env"))
version=$(content_hash <(echo "$rootfs_version") "$0")
image="$BASE_IMAGE_REPO:$version"
rootfs_tar="$FF_CACHE/images/base-rootfs-$rootfs_version.tar"

if docker image inspect "$image" >/dev/null 2>&1; then
  docker tag "$image" "$BASE_IMAGE_REPO:current"
  echo "$image"
  exit 0
fi

if [ ! -s "$rootfs_tar" ]; then
  apt_ensure debootstrap
  mkdir -p "$FF_CACHE/images"
  work=$(mktemp -d "$FF_CACHE/images/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  packages=$(grep -v '^#' "$FF_ROOT/images/base/packages.txt" | paste -sd, -)
  log "debootstrap $BASE_SUITE ($packages) - a few minutes, once"
  debootstrap --variant=minbase --include="$packages" "$BASE_SUITE" "$work/rootfs" "$BASE_MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 40 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  install -m 0755 "$FF_ROOT/images/base/configure.sh" "$work/rootfs/configure.sh"
  chroot "$work/rootfs" /configure.sh
  rm "$work/rootfs/configure.sh"
  tar -C "$work/rootfs" --numeric-owner -cf "$rootfs_tar.partial" .
  mv "$rootfs_tar.partial" "$rootfs_tar"
fi

log "docker import $image"
docker import \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change 'ENV container=docker' \
  --change "LABEL org.flaskfleet.recipe=$version" \
  "$rootfs_tar" "$image" >/dev/null
docker tag "$image" "$BASE_IMAGE_REPO:current"
# Older recipes' images go; one still used by a container stays.
docker images "$BASE_IMAGE_REPO" --format '{{.Tag}}' | grep -vxE "current|$version" |
  sed "s|^|$BASE_IMAGE_REPO:|" | xargs -r docker rmi >/dev/null 2>&1 || true
echo "$image"
