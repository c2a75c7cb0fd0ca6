#!/usr/bin/env bash
# Builds libalike (the C ABI, crate alike-c) and installs it where a C
# build finds it:
#
#   bash scripts/install-c.sh [PREFIX]       # PREFIX defaults to /usr/local
#
#   PREFIX/include/alike.h
#   PREFIX/lib/libalike.so.X.Y.Z             # soname libalike.so.X (X = ALIKE_VERSION_MAJOR),
#   PREFIX/lib/libalike.so.X -> .so.X.Y.Z    # with the usual symlinks
#   PREFIX/lib/libalike.so   -> .so.X
#   PREFIX/lib/libalike.a
#   PREFIX/lib/pkgconfig/alike.pc
#
# Then:  gcc app.c $(pkg-config --cflags --libs alike)
# or statically:
#        gcc app.c $(pkg-config --cflags alike) "$(pkg-config --variable=libdir alike)/libalike.a" \
#            $(pkg-config --variable=native_libs alike)
# (with PKG_CONFIG_PATH=PREFIX/lib/pkgconfig when PREFIX is not a system one).
#
# Environment: LIBDIR (default PREFIX/lib), DESTDIR (staged installs, for
# packagers: files go to DESTDIR/PREFIX/..., alike.pc names PREFIX),
# PROFILE (cargo profile, default release; the test command uses dev, which
# it has built already).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${1:-${PREFIX:-/usr/local}}
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
LIBDIR=${LIBDIR:-$PREFIX/lib}
INCLUDEDIR=$PREFIX/include
DESTDIR=${DESTDIR:-}
PROFILE=${PROFILE:-release}
case "$PROFILE" in dev | debug) PROFILE=dev; outdir=debug ;; *) outdir=$PROFILE ;; esac

header=bindings-c/include/alike.h
version=$(sed -n 's/^#define ALIKE_VERSION_STRING "\(.*\)"$/\1/p' "$header")
major=$(sed -n 's/^#define ALIKE_VERSION_MAJOR \([0-9]*\)$/\1/p' "$header")
if [ -z "$version" ] || [ -z "$major" ]; then
    echo "install-c.sh: no version in $header" >&2
    exit 1
fi
soname=libalike.so.$major

# One rustc run gives both libraries: the shared one linked with its soname
# (only here: target/*/libalike.so of a plain `cargo build` has none, so that
# `-L target/release -lalike` keeps working from the tree), and the list of
# system libraries the static one needs (--print native-static-libs; cargo
# replays it from its cache when nothing needs rebuilding).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo rustc --locked -p alike-c --lib --profile "$PROFILE" --message-format short \
    -- -C link-arg=-Wl,-soname,"$soname" --print native-static-libs 2>&1 | tee "$log" >&2
native_libs=$(sed -n 's/.*native-static-libs: //p' "$log" | tail -1)
[ -n "$native_libs" ] || { echo "install-c.sh: rustc printed no native-static-libs" >&2; exit 1; }

built=${CARGO_TARGET_DIR:-target}/$outdir
d_lib=$DESTDIR$LIBDIR
install -d "$DESTDIR$INCLUDEDIR" "$d_lib/pkgconfig"
install -m 644 "$header" "$DESTDIR$INCLUDEDIR/alike.h"
install -m 755 "$built/libalike.so" "$d_lib/libalike.so.$version"
ln -sfn "libalike.so.$version" "$d_lib/$soname"
ln -sfn "$soname" "$d_lib/libalike.so"
install -m 644 "$built/libalike.a" "$d_lib/libalike.a"

# shellcheck disable=SC2016  # a pkg-config variable, expanded by pkg-config
if [ "$LIBDIR" = "$PREFIX/lib" ]; then libdir='${prefix}/lib'; else libdir=$LIBDIR; fi
cat >"$d_lib/pkgconfig/alike.pc" <<EOF
prefix=$PREFIX
libdir=$libdir
includedir=\${prefix}/include
# What libalike.a needs besides itself (static linking).
native_libs=$native_libs

Name: alike
Description: Embeddable VM backup engine: block-level deduplicated, encrypted store of disk versions (C ABI)
URL: https://github.com/alike-backup/alike
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lalike
Libs.private: \${native_libs}
EOF

echo "installed libalike $version into ${DESTDIR}$PREFIX (alike.h, libalike.so.$version, $soname, libalike.so, libalike.a, pkgconfig/alike.pc)" >&2
