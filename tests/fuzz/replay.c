/* replay: runs a fuzz target's LLVMFuzzerTestOneInput once over each saved
 * input, so that `make check` keeps every corpus file and past crash passing
 * without clang or libFuzzer. Arguments are files or directories (one level,
 * dotfiles skipped). */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/util.h"

#define REPLAY_MAX_INPUT (16u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
replay_file(const char *path, size_t *count)
{
    char *buf;
    size_t len;
    int rc = lm_file_read(path, REPLAY_MAX_INPUT, &buf, &len);
    if (rc < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(-rc));
        return -1;
    }
    /* A copy of exactly len bytes, so ASan catches reads past the end. */
    uint8_t *data = lm_xmalloc(len ? len : 1);
    memcpy(data, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    (*count)++;
    return 0;
}

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
replay_dir(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;

    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = lm_xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = lm_xasprintf("%s/%s", dir, de->d_name);
    }
    closedir(d);
    /* Sorted, so that a failure reproduces in the same order. */
    if (n > 0)
        qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode) && replay_file(names[i], count) < 0)
            rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

int
main(int argc, char **argv)
{
    size_t count = 0;
    int rc = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            if (replay_dir(argv[i], &count) < 0)
                rc = -1;
        } else if (replay_file(argv[i], &count) < 0) {
            rc = -1;
        }
    }
    if (rc < 0)
        return 1;
    printf("replay: %zu inputs ok\n", count);
    return 0;
}
