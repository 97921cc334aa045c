# Shared by the packaging scripts: the reproducible build environment (docs/verify-a-release.md).
# Source it; it sets ROOT (the source tree: the git work tree these scripts live in).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Pinned packaging tools (cargo install --locked); cached in $STRONGROOM_TOOLS.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
STRONGROOM_TOOLS="${STRONGROOM_TOOLS:-$ROOT/target/tools}"

# Everything that could differ between two builds of one commit is fixed here: the time
# (SOURCE_DATE_EPOCH = the commit's time), the source and cargo-home paths (remapped),
# locale, time zone, umask and incremental compilation. The toolchain is pinned by
# rust-toolchain.toml and every cargo call is --locked.
repro_env() {
  export SOURCE_DATE_EPOCH
  SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct)"
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  cargo_home="$(cd "$cargo_home" && pwd -P)"
  local src
  src="$(pwd -P)"
  export RUSTFLAGS="--remap-path-prefix=$src=/build/strongroom --remap-path-prefix=$cargo_home=/cargo"
  export CARGO_INCREMENTAL=0 LC_ALL=C.UTF-8 TZ=UTC
  unset RUSTC_WRAPPER CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
  umask 022
  # The release build has its own target directory so the remapping flags do not
  # invalidate the everyday debug build.
  export CARGO_TARGET_DIR="${STRONGROOM_RELEASE_TARGET:-$ROOT/target/release-build}"
  DIST="$ROOT/target/dist"
  GEN="$CARGO_TARGET_DIR/release/packaging"
}

# Builds the release binary and the files generated from it (man page, completions, default
# config) into $GEN. Idempotent; cargo rebuilds only what changed.
build_release() {
  repro_env
  cargo build --release --locked -p strongroom >&2
  local bin="$CARGO_TARGET_DIR/release/strongroom"
  rm -rf "$GEN"
  mkdir -p "$GEN/completions" "$DIST"
  # The shipped binary carries no symbol table (Debian policy; same bytes in .deb and .rpm).
  # .comment only lists compiler versions (lintian: binary-has-unneeded-section).
  strip --strip-all --remove-section=.comment -o "$GEN/strongroom" "$bin"
  "$bin" man | gzip -9n > "$GEN/strongroom.1.gz"
  "$bin" completions bash > "$GEN/completions/strongroom.bash"
  "$bin" completions zsh > "$GEN/completions/_strongroom"
  "$bin" completions fish > "$GEN/completions/strongroom.fish"
  "$bin" config example > "$GEN/strongroom.toml"
  touch -d "@$SOURCE_DATE_EPOCH" "$GEN"/* "$GEN"/completions/*
  # cargo-generate-rpm only clamps newer mtimes, so a file older than the commit (as in a
  # long-lived checkout) would keep its own: give the packaged source files the commit time.
  touch -d "@$SOURCE_DATE_EPOCH" packaging/systemd/* packaging/softhsm2.conf docs/verify-a-release.md
}

# need_tool NAME VERSION: installs a pinned cargo tool into $STRONGROOM_TOOLS unless there.
need_tool() {
  export PATH="$STRONGROOM_TOOLS/bin:$PATH"
  local have
  have="$("$1" --version 2>/dev/null | awk '{print $NF}' || true)"
  if [ "$have" != "$2" ] && [ "$have" != "v$2" ]; then
    echo "installing $1 $2 into $STRONGROOM_TOOLS" >&2
    env -u RUSTFLAGS -u CARGO_TARGET_DIR cargo install --locked --version "$2" --root "$STRONGROOM_TOOLS" "$1" >&2
  fi
}
