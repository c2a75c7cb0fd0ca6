/*
 * File-level restore through the C ABI: a version of an ext4 image (made by
 * mke2fs in scripts/test-c.sh) listed as JSON and extracted into a folder;
 * files equal to the source, existing names refused then forced, bad
 * arguments refused. Run by scripts/test-c.sh (also under valgrind).
 * Usage: test_files WORK_DIR IMAGE SOURCE_DIR
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alike.h"

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            const char *m = alike_last_error_message();                                  \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, \
                    #cond, m ? m : "(none)");                                            \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static char buf[4][4096];
static int nbuf = 0;

static const char *join(const char *a, const char *b) {
    char *p = buf[nbuf++ % 4];
    snprintf(p, 4096, "%s/%s", a, b);
    return p;
}

static int files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb, ca, cb;
    while (same) {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static uint64_t last_done = 0, last_total = 0;
static int progress(void *user_data, alike_phase phase, uint64_t done, uint64_t total) {
    (void)user_data;
    CHECK(phase == ALIKE_PHASE_RESTORE);
    last_done = done;
    last_total = total;
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc == 4);
    const char *work = argv[1], *image = argv[2], *src = argv[3];
    alike_store_options *opts = alike_store_options_new();
    CHECK(alike_store_options_set_cache_dir(opts, join(work, "cache")) == ALIKE_OK);
    CHECK(alike_store_options_set_insecure_fast_kdf(opts) == ALIKE_OK);
    alike_store *s = NULL;
    CHECK(alike_store_create(join(work, "store"), "pw", opts, &s) == ALIKE_OK);
    const char *disks[] = {image};
    alike_version *v = NULL;
    CHECK(alike_store_backup(s, "files", disks, 1, NULL, NULL, NULL, &v) == ALIKE_OK);

    /* The volumes, then a directory, as JSON (the keys of `alike ls --json`). */
    char *json = NULL;
    CHECK(alike_store_ls_json(s, v, 0, 0, NULL, NULL, &json) == ALIKE_OK);
    CHECK(strstr(json, "\"filesystem\":\"ext4\"") != NULL && strstr(json, "\"volumes\":[{") != NULL);
    alike_string_free(json);
    json = NULL;
    CHECK(alike_store_ls_json(s, v, 0, 0, NULL, "/dir", &json) == ALIKE_OK);
    CHECK(strstr(json, "\"path\":\"/dir/inner.txt\"") != NULL);
    CHECK(strstr(json, "\"target\":\"../hello.txt\"") != NULL);
    alike_string_free(json);
    json = NULL;
    CHECK(alike_store_ls_json(s, v, 0, 0, NULL, "/nope", &json) == ALIKE_ERR_NOT_FOUND && json == NULL);
    CHECK(strstr(alike_last_error_message(), "/nope") != NULL);
    CHECK(alike_store_ls_json(s, v, 0, 3, NULL, "/", &json) == ALIKE_ERR_NOT_FOUND);
    CHECK(alike_store_ls_json(s, v, 0, 0, NULL, "/", NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_store_ls_json(NULL, v, 0, 0, NULL, "/", &json) == ALIKE_ERR_INVALID_ARGUMENT);

    /* Extract two paths; the files equal the source. */
    const char *paths[] = {"/hello.txt", "/dir"};
    const char *out = join(work, "out");
    char outdir[4096];
    snprintf(outdir, sizeof outdir, "%s", out);
    uint64_t failures = 99;
    char *report = NULL;
    CHECK(alike_store_extract(s, v, 0, 0, NULL, paths, 2, outdir, 0, progress, NULL, NULL, &failures, &report) ==
          ALIKE_OK);
    CHECK(failures == 0 && strstr(report, "\"failures\":[]") != NULL);
    CHECK(strstr(report, "\"store_bytes_read\":") != NULL);
    alike_string_free(report);
    CHECK(last_total > 0 && last_done == last_total);
    CHECK(files_equal(join(src, "hello.txt"), join(outdir, "hello.txt")));
    CHECK(files_equal(join(src, "dir/inner.txt"), join(outdir, "dir/inner.txt")));
    char target[256] = {0};
    CHECK(readlink(join(outdir, "dir/link"), target, sizeof target - 1) > 0 && strcmp(target, "../hello.txt") == 0);
    struct stat st;
    CHECK(stat(join(outdir, "hello.txt"), &st) == 0 && (st.st_mode & 07777) == 0640);

    /* Again: both exist (failures, not an error); forced: none. */
    CHECK(alike_store_extract(s, v, 0, 0, NULL, paths, 2, outdir, 0, NULL, NULL, NULL, &failures, NULL) == ALIKE_OK);
    CHECK(failures == 2);
    CHECK(alike_store_extract(s, v, 0, 0, NULL, paths, 2, outdir, ALIKE_EXTRACT_FORCE, NULL, NULL, NULL, &failures,
                              NULL) == ALIKE_OK);
    CHECK(failures == 0);

    /* Bad arguments and a missing path: refused, nothing written. */
    CHECK(alike_store_extract(s, v, 0, 0, NULL, NULL, 0, outdir, 0, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_store_extract(s, v, 0, 0, NULL, paths, 2, outdir, 8, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_store_extract(s, v, 0, 0, NULL, paths, 2, NULL, 0, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_INVALID_ARGUMENT);
    const char *missing[] = {"/missing"};
    CHECK(alike_store_extract(s, v, 0, 0, NULL, missing, 1, join(work, "out2"), 0, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_NOT_FOUND);
    CHECK(alike_store_extract(s, v, 0, 0, "vg/lv", paths, 2, join(work, "out3"), 0, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_NOT_FOUND);
    alike_cancel *tok = alike_cancel_new();
    alike_cancel_cancel(tok);
    CHECK(alike_store_extract(s, v, 0, 0, NULL, paths, 2, join(work, "out4"), 0, NULL, NULL, tok, NULL, NULL) ==
          ALIKE_ERR_CANCELLED);
    alike_cancel_free(tok);

    alike_version_free(v);
    alike_store_free(s);
    alike_store_options_free(opts);
    printf("test_files: all checks passed\n");
    return 0;
}
