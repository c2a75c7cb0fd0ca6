#!/usr/bin/env bash
# Builds libalike, compiles the C example and the C API tests against the
# committed header, runs them, then runs them again under valgrind (memcheck):
# any invalid access or definite/indirect leak fails.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p alike-c --locked
lib="$PWD/target/debug"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cflags=(-std=c11 -Wall -Wextra -Werror -g -I bindings-c/include)
gcc "${cflags[@]}" examples/c/backup.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/backup"
gcc "${cflags[@]}" bindings-c/tests/c/test_api.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/test_api"
# The static library links too (with the system libraries Rust needs).
gcc "${cflags[@]}" examples/c/backup.c "$lib/libalike.a" -lpthread -ldl -lm -o "$out/backup-static"

head -c $((8 << 20)) /dev/urandom > "$out/disk.img"
truncate -s 24M "$out/disk.img"

run() {
    local name=$1
    shift
    mkdir -p "$out/$name"
    "$@"
}
run plain "$out/backup" "$out/plain/store" "$out/disk.img" "$out/plain/restored.img" --insecure-fast-kdf
cmp "$out/disk.img" "$out/plain/restored.img"
run static "$out/backup-static" "$out/static/store" "$out/disk.img" "$out/static/restored.img" --insecure-fast-kdf
cmp "$out/disk.img" "$out/static/restored.img"
run api "$out/test_api" "$out/api"

if command -v valgrind >/dev/null; then
    vg=(valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
        --show-leak-kinds=definite,indirect)
    run vg-plain "${vg[@]}" "$out/backup" "$out/vg-plain/store" "$out/disk.img" "$out/vg-plain/restored.img" --insecure-fast-kdf
    cmp "$out/disk.img" "$out/vg-plain/restored.img"
    run vg-api "${vg[@]}" "$out/test_api" "$out/vg-api"
    echo "C example and C API tests: clean under valgrind"
else
    echo "valgrind not installed: C tests ran without memcheck" >&2
    [ -z "${CI:-}" ] || exit 1
fi
