#!/usr/bin/env bash
# Builds a Debian package of Strata with dpkg-deb: the binary in /usr/bin, man pages,
# completions for bash, zsh and fish, and example job files and systemd units in
# /usr/share/doc/strata/examples.
#
#   bash examples/deb.sh [OUT_DIR]         # default target/debian; prints the .deb's path
#
# STRATA_BIN packages this binary instead of building one. The package depends on the packages
# that hold the shared libraries the binary links (librocksdb among them), found with ldd and
# dpkg -S.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${CARGO_TARGET_DIR:-target}/debian}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# install.sh builds the binary unless STRATA_BIN names one.
DESTDIR="$stage" bash examples/install.sh /usr >/dev/null
bin="$stage/usr/bin/strata"
install -Dm644 LICENSE "$stage/usr/share/doc/strata/copyright"
# The package of each linked library (with /usr merged, dpkg may know it under /lib).
packages=()
for lib in $(ldd "$bin" | awk '/=> \//{print $3}'); do
  real=$(realpath "$lib")
  for path in "$lib" "$real" "${lib#/usr}" "${real#/usr}"; do
    pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1 || true)
    if [ -n "$pkg" ]; then packages+=("$pkg"); break; fi
  done
done
depends=$(printf '%s\n' "${packages[@]}" | sort -u | paste -sd, | sed 's/,/, /g')
mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: strata
Version: $version
Architecture: $arch
Maintainer: Strata developers <strata@localhost>
Depends: $depends
Section: admin
Priority: optional
Homepage: https://example.invalid/strata
Description: deduplicating full, differential and incremental disk images
 Strata backs up whole disks into one deduplicating repository as full,
 differential and incremental images, runs backup jobs on a schedule, and
 opens images without restoring them.
CONTROL
mkdir -p "$out"
deb="$out/strata_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
