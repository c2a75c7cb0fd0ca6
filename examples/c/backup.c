/*
 * A complete libalike program: create a store, back up a disk image, list
 * the versions, and restore the newest one.
 *
 *   backup STORE_DIR IMAGE RESTORED_IMAGE [--insecure-fast-kdf]
 *
 * Build (after `cargo build -p alike-c`):
 *   gcc -std=c11 -Wall -Wextra -I bindings-c/include examples/c/backup.c \
 *       -L target/debug -lalike -Wl,-rpath,$PWD/target/debug -o backup
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "alike.h"

/* Returns 0 to go on; non-zero would cancel the operation. */
static int progress(void *user_data, alike_phase phase, uint64_t done, uint64_t total) {
    const char *what = user_data;
    static int last_phase = -1;
    if (done == total && (int)phase != last_phase) {
        last_phase = (int)phase;
        printf("  %s: phase %d done (%" PRIu64 " bytes)\n", what, (int)phase, total);
    }
    return 0;
}

static int fail(const char *what, alike_result r) {
    const char *msg = alike_last_error_message();
    fprintf(stderr, "%s failed: %s: %s\n", what, alike_result_name(r), msg ? msg : "");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s STORE_DIR IMAGE RESTORED_IMAGE [--insecure-fast-kdf]\n", argv[0]);
        return 2;
    }
    const char *store_dir = argv[1], *image = argv[2], *restored = argv[3];
    printf("libalike %s (header %s)\n", alike_library_version(), ALIKE_VERSION_STRING);

    char cache[4096];
    snprintf(cache, sizeof cache, "%s.cache", store_dir);
    alike_store_options *opts = alike_store_options_new();
    alike_store_options_set_cache_dir(opts, cache);
    if (argc > 4 && strcmp(argv[4], "--insecure-fast-kdf") == 0) {
        alike_store_options_set_insecure_fast_kdf(opts);
    }

    alike_store *store = NULL;
    alike_result r = alike_store_create(store_dir, "correct horse battery staple", opts, &store);
    alike_store_options_free(opts);
    if (r != ALIKE_OK) return fail("create", r);

    const char *disks[] = {image};
    alike_version *v = NULL;
    r = alike_store_backup(store, "c-example-vm", disks, 1, progress, "backup", NULL, &v);
    if (r != ALIKE_OK) { alike_store_free(store); return fail("backup", r); }
    printf("backed up %s as version %.12s (%" PRIu64 " data bytes)\n", image, alike_version_id(v),
           alike_version_disk_data_bytes(v, 0));
    alike_version_free(v);

    alike_version_list *list = NULL;
    r = alike_store_versions(store, NULL, &list);
    if (r != ALIKE_OK) { alike_store_free(store); return fail("versions", r); }
    for (size_t i = 0; i < alike_version_list_len(list); i++) {
        const alike_version *x = alike_version_list_get(list, i);
        printf("  %.12s  %s  %" PRId64 "  %u disk(s), %" PRIu64 " bytes\n", alike_version_id(x),
               alike_version_vm(x), alike_version_time_ms(x), alike_version_disk_count(x),
               alike_version_disk_size(x, 0));
    }
    const alike_version *newest = alike_version_list_get(list, alike_version_list_len(list) - 1);
    r = alike_store_restore(store, newest, 0, restored, progress, "restore", NULL);
    alike_version_list_free(list);
    if (r != ALIKE_OK) { alike_store_free(store); return fail("restore", r); }
    printf("restored to %s\n", restored);

    uint64_t damaged = 0;
    r = alike_store_verify(store, true, NULL, NULL, NULL, &damaged);
    alike_store_free(store);
    if (r != ALIKE_OK) return fail("verify", r);
    printf("verify: %" PRIu64 " damaged\n", damaged);
    return damaged == 0 ? 0 : 1;
}
