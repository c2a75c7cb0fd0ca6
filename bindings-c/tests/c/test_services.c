/*
 * The services from C: a configuration file's backup job run against the
 * XAPI simulator, its events delivered to a C callback on the run's thread,
 * its record read as JSON. Run by scripts/test-c.sh (also under valgrind).
 * Usage: test_services WORK_DIR XAPI_URL
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
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

static char work[2048];

static const char *path(const char *name) {
    static char buf[4][4096];
    static int n = 0;
    char *p = buf[n++ % 4];
    snprintf(p, 4096, "%s/%s", work, name);
    return p;
}

static void write_file(const char *name, const char *text) {
    FILE *f = fopen(path(name), "w");
    CHECK(f != NULL);
    CHECK(fputs(text, f) >= 0);
    CHECK(fclose(f) == 0);
}

/* What the callback saw: the event types in order, under a lock (runs emit from their own threads). */
struct seen {
    pthread_mutex_t lock;
    char types[4096];
    int count;
};

static void on_event(const char *json, void *user) {
    struct seen *s = user;
    const char *t = strstr(json, "\"type\":\"");
    if (!t) return;
    t += 8;
    size_t n = strcspn(t, "\"");
    if (n == 8 && strncmp(t, "progress", 8) == 0) return;
    pthread_mutex_lock(&s->lock);
    if (strlen(s->types) + n + 2 < sizeof s->types) {
        strncat(s->types, t, n);
        strcat(s->types, ",");
    }
    s->count++;
    pthread_mutex_unlock(&s->lock);
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    snprintf(work, sizeof work, "%s", argv[1]);
    const char *url = argv[2];

    alike_store_options *o = alike_store_options_new();
    CHECK(alike_store_options_set_cache_dir(o, path("cache")) == ALIKE_OK);
    CHECK(alike_store_options_set_insecure_fast_kdf(o) == ALIKE_OK);
    alike_store *store = NULL;
    CHECK(alike_store_create(path("store"), "pw", o, &store) == ALIKE_OK);
    alike_store_free(store);
    alike_store_options_free(o);
    write_file("store.pass", "pw\n");
    write_file("xapi.pass", "alike\n");
    char config[4096];
    snprintf(config, sizeof config,
             "[[store]]\nname = \"main\"\npath = \"store\"\ncache_dir = \"cache\"\n"
             "passphrase = { file = \"store.pass\" }\n\n"
             "[[pool]]\nname = \"demo\"\nkind = \"xen\"\nurl = \"%s\"\nuser = \"root\"\n"
             "password = { file = \"xapi.pass\" }\ntemplate = \"alike-processor\"\n"
             "addresses = [\"10.99.0.10\"]\nssh_key = \"id_ed25519\"\n\n"
             "[[job]]\nname = \"nightly\"\nkind = \"backup\"\nvms = [\"db-01\"]\nstore = \"main\"\n"
             "pool = \"demo\"\noptions = { processor = false }\nschedule = \"@daily\"\n",
             url);
    write_file("alike.toml", config);

    alike_services *svc = NULL;
    CHECK(alike_services_open(NULL, path("services.redb"), &svc) == ALIKE_ERR_INVALID_ARGUMENT && svc == NULL);
    CHECK(alike_services_open(path("alike.toml"), path("services.redb"), &svc) == ALIKE_OK);
    alike_services *second = NULL;
    CHECK(alike_services_open(path("alike.toml"), path("services.redb"), &second) == ALIKE_ERR_BUSY);
    CHECK(second == NULL);

    struct seen seen = {.count = 0};
    pthread_mutex_init(&seen.lock, NULL);
    uint64_t sub = 0;
    CHECK(alike_services_subscribe(svc, on_event, &seen, &sub) == ALIKE_OK);
    uint64_t run = 0;
    CHECK(alike_services_run_now(svc, "nowhere", &run) == ALIKE_ERR_NOT_FOUND);
    CHECK(alike_services_run_now(svc, "nightly", &run) == ALIKE_OK && run > 0);
    CHECK(alike_services_wait_idle(svc, 120000));
    char *json = NULL;
    CHECK(alike_services_run_json(svc, run, &json) == ALIKE_OK);
    CHECK(strstr(json, "\"result\":\"success\"") != NULL);
    CHECK(strstr(json, "\"vm\":\"db-01\"") != NULL);
    alike_string_free(json);
    pthread_mutex_lock(&seen.lock);
    CHECK(strcmp(seen.types, "job_started,vm_started,vm_done,step_done,finished,") == 0);
    pthread_mutex_unlock(&seen.lock);
    CHECK(alike_services_unsubscribe(svc, sub));
    CHECK(!alike_services_unsubscribe(svc, sub));
    alike_services_free(svc);
    pthread_mutex_destroy(&seen.lock);
    printf("services: run %llu ok\n", (unsigned long long)run);
    return 0;
}
