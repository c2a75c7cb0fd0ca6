/*
 * Jobs on processors through the C ABI: a configuration file's job run on a
 * local processor (a network namespace with its own sshd, made by the
 * library), its result read from the report; a missing file and an unknown
 * job refused with a message naming them. Run by scripts/test-c.sh (also
 * under valgrind) where local processors can run (root, iproute2, sshd).
 * Usage: test_jobs CONFIG JOB
 */
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

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_jobs CONFIG JOB\n");
        return 2;
    }
    const char *jobs[] = {argv[2]};
    char *json = NULL;

    /* Refusals: no file, no such job, bad arguments; nothing is written to out_json. */
    CHECK(alike_jobs_run("/nonexistent/alike.toml", jobs, 1, NULL, &json) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(alike_last_error_message(), "/nonexistent/alike.toml") != NULL);
    CHECK(json == NULL);
    const char *nope[] = {"no-such-job"};
    CHECK(alike_jobs_run(argv[1], nope, 1, NULL, &json) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(alike_last_error_message(), "no-such-job") != NULL);
    CHECK(alike_jobs_run(argv[1], jobs, 0, NULL, &json) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(alike_jobs_run(argv[1], jobs, 1, NULL, NULL) == ALIKE_ERR_INVALID_ARGUMENT);
    CHECK(json == NULL);

    /* The job runs on a processor; its result is in the report. */
    alike_cancel *cancel = alike_cancel_new();
    CHECK(alike_jobs_run(argv[1], jobs, 1, cancel, &json) == ALIKE_OK);
    CHECK(json != NULL);
    CHECK(strstr(json, "\"result\"") != NULL);
    CHECK(strstr(json, "\"error\"") == NULL);
    CHECK(strstr(json, "\"ready_after_seconds\"") != NULL);
    printf("%s\n", json);
    alike_string_free(json);
    alike_cancel_free(cancel);
    return 0;
}
