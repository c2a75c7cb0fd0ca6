/*
 * Tests of the C ABI through the committed header: result codes and
 * messages, NULL and bad arguments, cancellation from a progress callback
 * and from a token, maintenance calls. Run by scripts/test-c.sh (also under
 * valgrind). Usage: test_api WORK_DIR [XAPI_URL of an alike-xapi-sim --demo]
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static char work[2048];

static const char *path(const char *name) {
    static char buf[4][4096];
    static int n = 0;
    char *p = buf[n++ % 4];
    snprintf(p, 4096, "%s/%s", work, name);
    return p;
}

static void write_image(const char *file, size_t mib, unsigned seed) {
    FILE *f = fopen(file, "wb");
    CHECK(f != NULL);
    unsigned x = seed;
    static unsigned char block[1 << 20];
    for (size_t m = 0; m < mib; m++) {
        for (size_t i = 0; i < sizeof block; i++) {
            x = x * 1103515245u + 12345u;
            block[i] = (unsigned char)(x >> 16);
        }
        CHECK(fwrite(block, 1, sizeof block, f) == sizeof block);
    }
    fclose(f);
}

static int files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    if (!fa || !fb) return 0;
    int same = 1, ca, cb;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb) same = 0;
    } while (same && ca != EOF);
    fclose(fa);
    fclose(fb);
    return same;
}

static alike_store_options *test_opts(const char *cache) {
    alike_store_options *o = alike_store_options_new();
    CHECK(alike_store_options_set_cache_dir(o, path(cache)) == ALIKE_OK);
    CHECK(alike_store_options_set_insecure_fast_kdf(o) == ALIKE_OK);
    return o;
}

/* Connects to an `nbd://127.0.0.1:PORT` URI and reads the server's first 8 bytes. */
static int nbd_greets(const char *uri) {
    const char *port = strrchr(uri, ':');
    CHECK(port != NULL);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(port + 1));
    CHECK(inet_pton(AF_INET, "127.0.0.1", &a.sin_addr) == 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    char magic[8];
    size_t got = 0;
    while (got < sizeof magic) {
        ssize_t n = read(fd, magic + got, sizeof magic - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    return got == sizeof magic && memcmp(magic, "NBDMAGIC", 8) == 0;
}

static int calls = 0;
static int count_progress(void *user_data, alike_phase phase, uint64_t done, uint64_t total) {
    (void)user_data;
    (void)phase;
    (void)done;
    (void)total;
    calls++;
    return 0;
}
static int cancel_after_first(void *user_data, alike_phase phase, uint64_t done, uint64_t total) {
    (void)phase;
    (void)total;
    calls++;
    if (user_data) alike_cancel_cancel((const alike_cancel *)user_data);
    return done > 0 && user_data == NULL; /* cancel through the return value when no token */
}

int main(int argc, char **argv) {
    CHECK(argc == 2 || argc == 3 || argc == 5);
    snprintf(work, sizeof work, "%s", argv[1]);
    CHECK(strcmp(alike_library_version(), ALIKE_VERSION_STRING) == 0);
    CHECK(strcmp(alike_result_name(ALIKE_ERR_CORRUPTION), "ALIKE_ERR_CORRUPTION") == 0);

    alike_store_options *opts = test_opts("cache");
    alike_store *s = NULL;

    /* NULL arguments are refused with a message naming them; out stays untouched. */
    CHECK(alike_store_create(NULL, "pw", opts, &s) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(alike_last_error_message(), "path") != NULL && s == NULL);
    CHECK(alike_store_create(path("store"), "pw", opts, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_store_options_set_compression_level(opts, 99) == ALIKE_ERR_INVALID_ARGUMENT);
    /* Chunking: a bad spec is refused with a message naming it; a fixed-block store is format 1. */
    {
        alike_store_options *fo = test_opts("cache-fixed");
        CHECK(alike_store_options_set_chunking(fo, "cdc:64/32/16") == ALIKE_ERR_INVALID_ARGUMENT);
        CHECK(strstr(alike_last_error_message(), "cdc:64/32/16") != NULL);
        CHECK(alike_store_options_set_chunking(fo, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
        CHECK(alike_store_options_set_chunking(fo, "fixed") == ALIKE_OK);
        alike_store *fs = NULL;
        CHECK(alike_store_create(path("fixed"), "pw", fo, &fs) == ALIKE_OK);
        alike_store_free(fs);
        alike_store_options_free(fo);
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%s/config", path("fixed"));
        FILE *f = fopen(cfg, "rb");
        unsigned char head[12];
        CHECK(f != NULL && fread(head, 1, 12, f) == 12 && head[8] == 1);
        fclose(f);
    }

    CHECK(alike_store_create(path("store2"), "pw", opts, &s) == ALIKE_OK);
    CHECK(alike_last_error_message() == NULL);
    CHECK(alike_last_error_retry() == ALIKE_RETRY_NONE);
    alike_store_free(s);
    s = NULL;
    CHECK(alike_store_create(path("store"), "pw", opts, &s) == ALIKE_OK);
    alike_store *again = NULL;
    CHECK(alike_store_create(path("store"), "pw", opts, &again) == ALIKE_ERR_ALREADY_EXISTS && again == NULL);

    /* Wrong passphrase and not-a-store. */
    alike_store_options *o2 = test_opts("cache-b");
    CHECK(alike_store_open(path("store"), "wrong", o2, &again) == ALIKE_ERR_WRONG_PASSPHRASE);
    CHECK(strstr(alike_last_error_message(), "passphrase") != NULL);
    CHECK(alike_store_open(path("store"), NULL, o2, &again) == ALIKE_ERR_PASSPHRASE_REQUIRED);
    CHECK(alike_store_open(path("nothing"), "pw", o2, &again) == ALIKE_ERR_NOT_A_STORE);
    CHECK(alike_last_error_retry() == ALIKE_RETRY_PERMANENT);
    CHECK(again == NULL);
    /* A key file is a small regular file: /dev/zero is refused at once, not read forever. */
    CHECK(alike_store_options_set_key_file(o2, "/dev/zero") == ALIKE_OK);
    CHECK(alike_store_open(path("store"), NULL, o2, &again) == ALIKE_ERR_INVALID_ARGUMENT && again == NULL);
    CHECK(strstr(alike_last_error_message(), "not a regular file") != NULL);
    alike_store_options_free(o2);

    /* Backup, then a missing image fails with IO and names the file. */
    write_image(path("a.img"), 4, 1);
    const char *disks[] = {path("a.img")};
    alike_version *v = NULL;
    CHECK(alike_store_backup(s, "vm1", disks, 1, NULL, NULL, NULL, &v) == ALIKE_OK);
    CHECK(strlen(alike_version_id(v)) == 64 && strcmp(alike_version_vm(v), "vm1") == 0);
    /* The same keys as `alike versions --json` and testdata/report-schema.json. */
    {
        const char *keys[] = {"\"id\"", "\"vm\"", "\"time\"", "\"time_ms\"", "\"parent\"", "\"host\"",
                              "\"config\"", "\"disks\"", "\"change_token\"", "\"chunking\":\"cdc:16/32/64\""};
        for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
            CHECK(strstr(alike_version_json(v), keys[i]) != NULL);
    }
    CHECK(alike_version_disk_count(v) == 1 && alike_version_disk_size(v, 0) == 4u << 20);
    CHECK(alike_version_disk_size(v, 7) == 0);
    const char *missing[] = {path("missing.img")};
    CHECK(alike_store_backup(s, "vm1", missing, 1, NULL, NULL, NULL, NULL) == ALIKE_ERR_IO);
    CHECK(strstr(alike_last_error_message(), "missing.img") != NULL);
    CHECK(alike_store_backup(s, "vm1", NULL, 0, NULL, NULL, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    /* A character device is not a disk. */
    const char *zero[] = {"/dev/zero"};
    CHECK(alike_store_backup(s, "vm1", zero, 1, NULL, NULL, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(alike_last_error_message(), "character device") != NULL);

    /* Cancel through the callback's return value, then through a token. */
    write_image(path("b.img"), 64, 2);
    const char *big[] = {path("b.img")};
    CHECK(alike_store_backup(s, "vm2", big, 1, cancel_after_first, NULL, NULL, NULL) == ALIKE_ERR_CANCELLED);
    CHECK(calls > 0);
    alike_cancel *tok = alike_cancel_new();
    CHECK(!alike_cancel_is_cancelled(tok));
    CHECK(alike_store_backup(s, "vm2", big, 1, cancel_after_first, tok, tok, NULL) == ALIKE_ERR_CANCELLED);
    CHECK(alike_cancel_is_cancelled(tok));
    alike_cancel_free(tok);
    alike_version_list *list = NULL;
    CHECK(alike_store_versions(s, "vm2", &list) == ALIKE_OK && alike_version_list_len(list) == 0);
    alike_version_list_free(list);

    /* Restore by a found version; NOT_FOUND for an unknown VM. */
    alike_version *found = NULL;
    CHECK(alike_store_find_version(s, "latest", "ghost", &found) == ALIKE_ERR_NOT_FOUND && found == NULL);
    CHECK(alike_store_find_version(s, "latest", "vm1", &found) == ALIKE_OK);
    CHECK(strcmp(alike_version_id(found), alike_version_id(v)) == 0);
    CHECK(alike_store_restore(s, found, 0, path("a.out"), NULL, NULL, NULL) == ALIKE_OK);
    /* An existing output is refused by the old functions and replaced with ALIKE_RESTORE_FORCE. */
    CHECK(alike_store_restore(s, found, 0, path("a.out"), NULL, NULL, NULL) == ALIKE_ERR_ALREADY_EXISTS);
    CHECK(strstr(alike_last_error_message(), "already exists") != NULL);
    CHECK(alike_store_restore_ex(s, found, 0, path("a.out"), ALIKE_IMAGE_RAW, ALIKE_RESTORE_FORCE, NULL, NULL, NULL) ==
          ALIKE_OK);
    CHECK(alike_store_restore_ex(s, found, 0, path("a.out"), ALIKE_IMAGE_RAW, 0x80, NULL, NULL, NULL) ==
          ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(files_equal(path("a.img"), path("a.out")));
    CHECK(alike_store_restore(s, found, 3, path("x.out"), NULL, NULL, NULL) != ALIKE_OK);
    /* The same disk as a dynamic VHDX, which backs up again to the same bytes. */
    CHECK(alike_store_restore_image(s, found, 0, path("a.vhdx"), ALIKE_IMAGE_VHDX, NULL, NULL, NULL) == ALIKE_OK);
    CHECK(alike_store_restore_image(s, found, 0, path("a.bad"), 7, NULL, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    const char *vhdx[] = {path("a.vhdx")};
    alike_version *from_vhdx = NULL;
    CHECK(alike_store_backup(s, "vm-hv", vhdx, 1, NULL, NULL, NULL, &from_vhdx) == ALIKE_OK);
    CHECK(alike_version_disk_size(from_vhdx, 0) == 4u << 20);
    CHECK(alike_store_restore(s, from_vhdx, 0, path("a2.out"), NULL, NULL, NULL) == ALIKE_OK);
    CHECK(files_equal(path("a.img"), path("a2.out")));
    char hv_id[65];
    snprintf(hv_id, sizeof hv_id, "%s", alike_version_id(from_vhdx));
    alike_version_free(from_vhdx);
    /* NBD export: started on a free port, read by a client, stopped with its report. */
    {
        alike_nbd_options *no = alike_nbd_options_new();
        CHECK(alike_nbd_options_set_listen_tcp(no, "127.0.0.1:0") == ALIKE_OK);
        CHECK(alike_nbd_options_set_listen_tcp(no, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
        alike_nbd_server *srv = NULL;
        CHECK(alike_store_serve_nbd(s, found, no, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
        CHECK(alike_store_serve_nbd(s, found, no, &srv) == ALIKE_OK && srv != NULL);
        const char *uri = alike_nbd_server_uri(srv);
        CHECK(strncmp(uri, "nbd://127.0.0.1:", 16) == 0);
        CHECK(strstr(alike_nbd_server_listening_json(srv), "/disk0\"") != NULL);
        CHECK(alike_nbd_server_report_json(srv) == NULL);
        CHECK(nbd_greets(uri));
        if (system("command -v nbdcopy >/dev/null 2>&1") == 0) {
            char cmd[4096];
            snprintf(cmd, sizeof cmd, "nbdcopy '%s/disk0' '%s'", uri, path("nbd.out"));
            CHECK(system(cmd) == 0);
            CHECK(files_equal(path("a.img"), path("nbd.out")));
        }
        CHECK(alike_nbd_server_stop(srv) == ALIKE_OK);
        CHECK(alike_nbd_server_stop(srv) == ALIKE_OK);
        CHECK(strstr(alike_nbd_server_report_json(srv), "\"connections\":") != NULL);
        alike_nbd_server_free(srv);
        /* A disk the version lacks, unusable TLS files: refused before listening. */
        srv = NULL;
        CHECK(alike_nbd_options_set_disk(no, 7) == ALIKE_OK);
        CHECK(alike_store_serve_nbd(s, found, no, &srv) != ALIKE_OK && srv == NULL);
        CHECK(strstr(alike_last_error_message(), "7") != NULL);
        CHECK(alike_nbd_options_set_disk(no, 0) == ALIKE_OK);
        CHECK(alike_nbd_options_set_tls(no, path("no-cert.pem"), path("no-key.pem"), NULL) == ALIKE_OK);
        CHECK(alike_store_serve_nbd(s, found, no, &srv) == ALIKE_ERR_IO && srv == NULL);
        CHECK(strstr(alike_last_error_message(), "no-cert.pem") != NULL);
        /* Freeing a running server stops it. */
        alike_nbd_options *plain = alike_nbd_options_new();
        CHECK(alike_nbd_options_set_listen_tcp(plain, "127.0.0.1:0") == ALIKE_OK);
        CHECK(alike_store_serve_nbd(s, found, plain, &srv) == ALIKE_OK);
        alike_nbd_server_free(srv);
        alike_nbd_server_free(NULL);
        alike_nbd_options_free(plain);
        alike_nbd_options_free(no);
    }

    /* A file that claims to be VHDX but is not is refused as a bad image. */
    FILE *fake = fopen(path("fake.vhdx"), "wb");
    CHECK(fake != NULL);
    fputs("vhdxfile", fake);
    for (int i = 0; i < 300000; i++) fputc(0, fake);
    fclose(fake);
    const char *fakes[] = {path("fake.vhdx")};
    CHECK(alike_store_backup(s, "vm-hv", fakes, 1, NULL, NULL, NULL, NULL) == ALIKE_ERR_BAD_IMAGE);
    CHECK(strstr(alike_last_error_message(), "fake.vhdx") != NULL);
    alike_version_free(found);

    /* Maintenance: stats, pin, prune, gc, verify. */
    write_image(path("a.img"), 4, 3);
    CHECK(alike_store_backup(s, "vm1", disks, 1, NULL, NULL, NULL, NULL) == ALIKE_OK);
    alike_stats st;
    CHECK(alike_store_stats(s, &st) == ALIKE_OK && st.versions == 3 && st.packs >= 1);
    CHECK(alike_store_pin(s, alike_version_id(v)) == ALIKE_OK);
    alike_retention keep = {0};
    uint64_t removed = 99;
    CHECK(alike_store_prune(s, NULL, &keep, false, &removed) == ALIKE_ERR_INVALID_ARGUMENT && removed == 99);
    keep.keep_last = 1;
    CHECK(alike_store_prune(s, "vm1", &keep, false, &removed) == ALIKE_OK && removed == 0); /* pinned stays */
    CHECK(alike_store_unpin(s, alike_version_id(v)) == ALIKE_OK);
    CHECK(alike_store_prune(s, "vm1", &keep, false, &removed) == ALIKE_OK && removed == 1);
    CHECK(alike_store_forget(s, hv_id) == ALIKE_OK); /* it shared the pruned version's data */
    uint64_t freed = 0;
    CHECK(alike_store_gc(s, NULL, NULL, NULL, &freed) == ALIKE_OK && freed > 0);
    uint64_t damaged = 1;
    CHECK(alike_store_verify(s, true, NULL, NULL, NULL, &damaged) == ALIKE_OK && damaged == 0);
    CHECK(alike_store_forget(s, alike_version_id(v)) == ALIKE_ERR_NOT_FOUND);
    alike_version_free(v);

    /* Vault to a second store with its own passphrase; the vault alone restores. */
    alike_store_options *vo = test_opts("vault-cache");
    alike_store *vault = NULL;
    CHECK(alike_store_create(path("vault"), "vault-pw", vo, &vault) == ALIKE_OK);
    uint64_t copied = 0, sent = 0;
    CHECK(alike_store_vault(s, vault, "vm1", 0, NULL, NULL, NULL, &copied, &sent) == ALIKE_OK);
    CHECK(copied == 1 && sent > 0);
    CHECK(alike_store_vault(s, vault, "vm1", 0, NULL, NULL, NULL, &copied, &sent) == ALIKE_OK && copied == 0);
    CHECK(alike_store_vault(s, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    alike_version *vv = NULL;
    CHECK(alike_store_find_version(vault, "latest", "vm1", &vv) == ALIKE_OK);
    CHECK(alike_store_restore(vault, vv, 0, path("from-vault.out"), NULL, NULL, NULL) == ALIKE_OK);
    CHECK(files_equal(path("a.img"), path("from-vault.out")));
    alike_version_free(vv);
    alike_store_free(vault);
    alike_store_options_free(vo);

    /* XenServer, when a simulator URL is given: full, then CBT incremental, then a new VM. */
    if (argc > 2) {
        alike_xen_pool *pool = NULL;
        CHECK(alike_xen_pool_connect(argv[2], "root", "wrong", NULL, &pool) != ALIKE_OK && pool == NULL);
        CHECK(strstr(alike_last_error_message(), "SESSION_AUTHENTICATION_FAILED") != NULL);
        CHECK(alike_xen_pool_connect(argv[2], "root", "alike", NULL, &pool) == ALIKE_OK);
        uint32_t inc = 9, full = 9;
        alike_version *xv = NULL;
        CHECK(alike_store_backup_xen(s, pool, "web-01", NULL, NULL, NULL, &inc, &full, &xv) == ALIKE_OK);
        CHECK(inc == 0 && full == 2 && alike_version_disk_count(xv) == 2);
        alike_version_free(xv);
        CHECK(alike_store_backup_xen(s, pool, "web-01", NULL, NULL, NULL, &inc, &full, &xv) == ALIKE_OK);
        CHECK(inc == 2 && full == 0);
        char uuid[37] = {0};
        CHECK(alike_store_restore_xen_vm(s, xv, pool, "Local storage", NULL, NULL, NULL, NULL, uuid) == ALIKE_OK);
        CHECK(strlen(uuid) == 36);
        CHECK(alike_store_backup_xen(s, pool, "no-such-vm", NULL, NULL, NULL, NULL, NULL, NULL) == ALIKE_ERR_NOT_FOUND);
        alike_version_free(xv);
        alike_xen_pool_free(pool);
    }

    /* Hyper-V, when a simulator URL and SMB port are given: full, then RCT incremental, then a new VM. */
    if (argc > 4) {
        alike_hyperv_host *host = NULL;
        uint16_t smb = (uint16_t)atoi(argv[4]);
        CHECK(alike_hyperv_host_connect(argv[3], "hvadmin", "wrong", smb, NULL, &host) != ALIKE_OK && host == NULL);
        CHECK(alike_hyperv_host_connect(argv[3], "hvadmin", "C-pw!1", smb, NULL, &host) == ALIKE_OK);
        uint32_t inc = 9, full = 9;
        alike_version *hv = NULL;
        CHECK(alike_store_backup_hyperv(s, host, "web-01", NULL, NULL, NULL, &inc, &full, &hv) == ALIKE_OK);
        CHECK(inc == 0 && full == 2 && alike_version_disk_count(hv) == 2);
        alike_version_free(hv);
        CHECK(alike_store_backup_hyperv(s, host, "web-01", NULL, NULL, NULL, &inc, &full, &hv) == ALIKE_OK);
        CHECK(inc == 2 && full == 0);
        char id[37] = {0};
        CHECK(alike_store_restore_hyperv_vm(s, hv, host, "C:\\Restored", NULL, NULL, NULL, NULL, id) == ALIKE_OK);
        CHECK(strlen(id) == 36);
        CHECK(alike_store_restore_hyperv_vm(s, hv, host, "C:\\R2", "no such switch", NULL, NULL, NULL, NULL) ==
              ALIKE_ERR_NOT_FOUND);
        alike_version_free(hv);
        alike_hyperv_host_free(host);
    }

    /* Replication into a folder of VHDX files: a first run, then a change, then points and exports. */
    {
        write_image(path("r0.img"), 4, 11);
        alike_replica *rep = NULL;
        CHECK(alike_replica_open(path("replica"), &rep) == ALIKE_ERR_NOT_FOUND && rep == NULL);
        CHECK(alike_replica_open_or_create(path("replica"), "vm-r", &rep) == ALIKE_OK && rep != NULL);
        const char *imgs[] = {path("r0.img")};
        alike_replicate_report rr;
        memset(&rr, 0, sizeof rr);
        calls = 0;
        CHECK(alike_replica_replicate(rep, imgs, 1, 0, 0, count_progress, NULL, NULL, &rr) == ALIKE_OK);
        CHECK(rr.point == 1 && rr.read_bytes == (4u << 20) && rr.sent_bytes > 0 && calls > 0);
        uint64_t first_sent = rr.sent_bytes;
        /* One 4 KiB block changes: far less crosses the second time. */
        FILE *f = fopen(path("r0.img"), "r+b");
        CHECK(f != NULL);
        CHECK(fseek(f, 1 << 20, SEEK_SET) == 0);
        static unsigned char blk[4096];
        memset(blk, 0x5a, sizeof blk);
        CHECK(fwrite(blk, 1, sizeof blk, f) == sizeof blk);
        fclose(f);
        CHECK(alike_replica_replicate(rep, imgs, 1, 5, 0, NULL, NULL, NULL, &rr) == ALIKE_OK);
        CHECK(rr.point == 2 && rr.needed_bytes <= (64u << 10) && rr.sent_bytes * 10 < first_sent);
        alike_replica_point_list *pts = NULL;
        CHECK(alike_replica_points(rep, &pts) == ALIKE_OK);
        CHECK(alike_replica_point_list_len(pts) == 2);
        alike_replica_point p;
        CHECK(alike_replica_point_list_get(pts, 1, &p) == ALIKE_OK && p.point == 2 && p.disk_count == 1);
        CHECK(alike_replica_point_list_get(pts, 2, &p) == ALIKE_ERR_INVALID_ARGUMENT);
        CHECK(strstr(alike_replica_point_list_json(pts), "\"time_ms\"") != NULL);
        alike_replica_point_list_free(pts);
        CHECK(alike_replica_export(rep, 2, 0, path("r0.out"), false, NULL, NULL, NULL) == ALIKE_OK);
        CHECK(files_equal(path("r0.img"), path("r0.out")));
        CHECK(alike_replica_export(rep, 2, 0, path("r0.out"), false, NULL, NULL, NULL) == ALIKE_ERR_ALREADY_EXISTS);
        CHECK(alike_replica_export(rep, 9, 0, path("r9.out"), false, NULL, NULL, NULL) == ALIKE_ERR_NOT_FOUND);
        /* A cancel from the progress callback leaves the replica at its last point. */
        calls = 0;
        CHECK(alike_replica_replicate(rep, imgs, 1, 0, 0, cancel_after_first, NULL, NULL, NULL) == ALIKE_ERR_CANCELLED);
        CHECK(alike_replica_points(rep, &pts) == ALIKE_OK && alike_replica_point_list_len(pts) == 2);
        alike_replica_point_list_free(pts);
        CHECK(alike_replica_replicate(rep, NULL, 0, 0, 0, NULL, NULL, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
        CHECK(alike_replica_replicate(NULL, imgs, 1, 0, 0, NULL, NULL, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
        alike_replica_free(rep);
    }

    /* Write-only keys: a writer backs up, restores nothing; the full key restores. */
    {
        alike_store_options *wo = test_opts("cache-w");
        CHECK(alike_store_options_set_writer_keys(wo) == ALIKE_OK);
        alike_store *ws = NULL;
        CHECK(alike_store_create(path("wstore"), "pw", wo, &ws) == ALIKE_OK);
        CHECK(alike_store_add_writer_key(s, path("w.key")) == ALIKE_ERR_INVALID_ARGUMENT);
        CHECK(strstr(alike_last_error_message(), "write-only keys") != NULL);
        CHECK(alike_store_add_writer_key(ws, path("w.key")) == ALIKE_OK);
        CHECK(alike_store_add_writer_key(ws, path("w.key")) == ALIKE_ERR_ALREADY_EXISTS);
        alike_store_options *wk = test_opts("cache-wk");
        CHECK(alike_store_options_set_key_file(wk, path("w.key")) == ALIKE_OK);
        alike_store *writer = NULL;
        CHECK(alike_store_open(path("wstore"), NULL, wk, &writer) == ALIKE_OK);
        alike_version *wv = NULL;
        const char *wd[] = {path("a.img")};
        CHECK(alike_store_backup(writer, "wvm", wd, 1, NULL, NULL, NULL, &wv) == ALIKE_OK);
        CHECK(alike_store_restore_image(writer, wv, 0, path("w.img"), 0, NULL, NULL, NULL) ==
              ALIKE_ERR_WRITE_ONLY_KEY);
        CHECK(strstr(alike_last_error_message(), "write-only key") != NULL);
        CHECK(strcmp(alike_result_name(ALIKE_ERR_WRITE_ONLY_KEY), "ALIKE_ERR_WRITE_ONLY_KEY") == 0);
        CHECK(alike_store_restore_image(ws, wv, 0, path("w.img"), 0, NULL, NULL, NULL) == ALIKE_OK);
        CHECK(files_equal(path("a.img"), path("w.img")));
        alike_version_free(wv);
        alike_store_free(writer);
        alike_store_free(ws);
        alike_store_options_free(wk);
        alike_store_options_free(wo);
    }

    alike_store_free(s);
    alike_store_options_free(opts);
    printf("test_api: all checks passed\n");
    return 0;
}
