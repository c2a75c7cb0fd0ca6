/*
 * Xen replicas through the C ABI, across two simulated pools: a cancelled
 * run, a full then an incremental replication (bytes sent), the points,
 * a test failover and its end, a failover, a refused failback (the
 * original still runs), a failback onto a new VM (a wrong SR refused,
 * then a whole copy). Run by scripts/test-c.sh (also under valgrind).
 * Usage: test_xen_replica WORK_DIR XAPI_URL_A XAPI_URL_B (alike-xapi-sim --demo each)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define NET "Pool-wide network associated with eth0"

static int count_calls(void *user_data, alike_phase phase, uint64_t done, uint64_t total) {
    (void)phase;
    (void)done;
    (void)total;
    ++*(int *)user_data;
    return 0;
}

static int cancel_at_once(void *user_data, alike_phase phase, uint64_t done, uint64_t total) {
    (void)user_data;
    (void)phase;
    (void)done;
    (void)total;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s WORK_DIR XAPI_URL_A XAPI_URL_B\n", argv[0]);
        return 2;
    }
    char state[4096];
    snprintf(state, sizeof state, "%s/state", argv[1]);
    alike_xen_pool *a = NULL, *b = NULL;
    CHECK(alike_xen_pool_connect(argv[2], "root", "alike", NULL, &a) == ALIKE_OK);
    CHECK(alike_xen_pool_connect(argv[3], "root", "alike", NULL, &b) == ALIKE_OK);

    /* Bad arguments and a cancelled run fail cleanly. */
    CHECK(alike_xen_replicate(a, "web-01", NULL, "Local storage", NULL, state, 0, 0, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_xen_replicate(a, "no-such-vm", b, "Local storage", NULL, state, 0, 0, NULL, NULL, NULL, NULL, NULL) ==
          ALIKE_ERR_NOT_FOUND);
    alike_cancel *tok = alike_cancel_new();
    alike_cancel_cancel(tok);
    CHECK(alike_xen_replicate(a, "web-01", b, "Local storage", NET, state, 0, 0, NULL, NULL, tok, NULL, NULL) ==
          ALIKE_ERR_CANCELLED);
    alike_cancel_free(tok);
    CHECK(alike_xen_replicate(a, "web-01", b, "Local storage", NET, state, 0, 0, cancel_at_once, NULL, NULL, NULL,
                              NULL) == ALIKE_ERR_CANCELLED);

    /* A full run, then an incremental one that sends almost nothing. */
    int calls = 0;
    alike_replicate_report r1, r2;
    alike_xen_replica *made = NULL;
    CHECK(alike_xen_replicate(a, "web-01", b, "Local storage", NET, state, 0, 0, count_calls, &calls, NULL, &r1,
                              &made) == ALIKE_OK);
    CHECK(made != NULL && calls > 0 && r1.point == 1 && r1.read_bytes > 0 && r1.sent_bytes > 0);
    CHECK(alike_xen_replicate(a, "web-01", b, "Local storage", NET, state, 3, 0, NULL, NULL, NULL, &r2, NULL) ==
          ALIKE_OK);
    CHECK(r2.point == 2 && r2.needed_bytes == 0 && r2.sent_bytes < r1.sent_bytes / 20);

    /* The replica VM, opened by name, is the one the first run made. */
    alike_xen_replica *rep = NULL;
    CHECK(alike_xen_replica_open(b, "no-such-replica", state, &rep) != ALIKE_OK && rep == NULL);
    CHECK(alike_xen_replica_open(b, "web-01 (replica)", state, &rep) == ALIKE_OK);
    char u1[37], u2[37];
    CHECK(alike_xen_replica_uuid(made, u1) == ALIKE_OK && alike_xen_replica_uuid(rep, u2) == ALIKE_OK);
    CHECK(strlen(u1) == 36 && strcmp(u1, u2) == 0);
    alike_xen_replica_free(made);

    alike_replica_point_list *pl = NULL;
    CHECK(alike_xen_replica_points(rep, &pl) == ALIKE_OK);
    CHECK(alike_replica_point_list_len(pl) == 2);
    alike_replica_point p;
    CHECK(alike_replica_point_list_get(pl, 0, &p) == ALIKE_OK && p.point == 1 && p.disk_count > 0);
    CHECK(alike_replica_point_list_get(pl, 1, &p) == ALIKE_OK && p.point == 2 && p.time_ms >= r1.time_ms);
    CHECK(alike_replica_point_list_get(pl, 2, &p) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(alike_replica_point_list_json(pl), "\"point\":1") != NULL);
    alike_replica_point_list_free(pl);

    /* Test failover of point 1, then its end (twice: the second finds nothing). */
    char tvm[37];
    uint64_t tp = 0;
    CHECK(alike_xen_replica_test_failover(rep, 99, NULL, true, tvm, &tp) == ALIKE_ERR_NOT_FOUND);
    CHECK(alike_xen_replica_test_failover(rep, 1, NULL, true, tvm, &tp) == ALIKE_OK);
    CHECK(tp == 1 && strlen(tvm) == 36 && strcmp(tvm, u2) != 0);
    CHECK(alike_xen_replica_end_test(rep, tvm) == ALIKE_OK);
    CHECK(alike_xen_replica_end_test(rep, tvm) != ALIKE_OK);

    /* Failover at the newest point, the network mapped; failback refused while the original runs. */
    const char *from[] = {NET}, *to[] = {NET};
    CHECK(alike_xen_replica_failover(rep, 0, NULL, to, 1, false, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    uint64_t fp = 0;
    CHECK(alike_xen_replica_failover(rep, 0, from, to, 1, false, &fp) == ALIKE_OK && fp == 2);
    alike_xen_failback_report fb;
    CHECK(alike_xen_replica_failback(rep, a, "web-01", false, 0, NULL, NULL, NULL, &fb) == ALIKE_ERR_INVALID_ARGUMENT);
    /* Failback onto a new VM: a wrong SR is refused (nothing made); then a whole copy, roles swapped. */
    CHECK(alike_xen_replica_failback_new_vm(rep, a, "no such SR", NULL, NULL, false, 0, NULL, NULL, NULL, &fb) ==
          ALIKE_ERR_NOT_FOUND);
    CHECK(alike_xen_replica_failback_new_vm(rep, a, NULL, NULL, NULL, false, 0, NULL, NULL, NULL, &fb) ==
          ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_xen_replica_failback_new_vm(rep, a, "Local storage", NET, "web-01 (rebuilt)", false, 0, NULL, NULL,
                                            NULL, &fb) == ALIKE_OK);
    CHECK(fb.needed_bytes > (1u << 20) && !fb.started && fb.replica_point == fp + 1);

    alike_xen_replica_free(rep);
    alike_xen_pool_free(b);
    alike_xen_pool_free(a);
    alike_xen_replica_free(NULL);
    printf("C Xen replica tests: ok\n");
    return 0;
}
