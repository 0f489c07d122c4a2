#!/usr/bin/env bash
# Installs Strata: the binary, man pages, shell completions, example job files and systemd units.
#
#   bash examples/install.sh [PREFIX]      # default /usr/local; builds the release binary
#
# Environment: DESTDIR (stage the files under it, as packagers do: paths inside them still say
# PREFIX), STRATA_BIN (install this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-/usr/local}"
dest="${DESTDIR:-}"
bin="${STRATA_BIN:-}"
if [ -z "$bin" ]; then
  source .ci/setup
  cargo build --release --quiet
  bin="$STRATA_TARGET_DIR/release/strata"
fi
root="$dest$prefix"
install -Dm755 "$bin" "$root/bin/strata"
strata="$root/bin/strata"
"$strata" man "$root/share/man/man1"
gzip -9nf "$root"/share/man/man1/*.1
install -d "$root/share/bash-completion/completions" "$root/share/zsh/vendor-completions" \
  "$root/share/fish/vendor_completions.d"
"$strata" completions bash > "$root/share/bash-completion/completions/strata"
"$strata" completions zsh > "$root/share/zsh/vendor-completions/_strata"
"$strata" completions fish > "$root/share/fish/vendor_completions.d/strata.fish"

# Example jobs, and the units `strata schedule` writes for one of them, naming the installed
# binary and the job's place in /etc/strata/jobs/.
examples="$root/share/doc/strata/examples"
install -d "$examples/units"
install -m644 examples/jobs/*.toml "$examples/"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp examples/jobs/grandfather-father-son.toml "$work/system-disk.toml"
"$strata" schedule "$work/system-disk.toml" --systemd --out "$work/units" >/dev/null
for unit in "$work"/units/*; do
  sed -e "s|$strata|$prefix/bin/strata|g" -e "s|$work/system-disk.toml|/etc/strata/jobs/system-disk.toml|g" \
    "$unit" > "$examples/units/$(basename "$unit")"
done
echo "installed strata into $root"
