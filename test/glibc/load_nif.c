/* Loads the NIF library the way the BEAM does (dlopen), under Debian 11's glibc 2.31 and
 * libgcc_s: run through that release's dynamic loader by check-glibc.sh. A library that
 * needs a newer symbol version fails here with the loader's own message
 * ("version `GLIBC_2.34' not found"). Symbols the BEAM provides (enif_*) are functions,
 * bound lazily, so they are not needed to load. */
#include <dlfcn.h>
#include <stdio.h>
#include <gnu/libc-version.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s LIBRARY\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_LAZY | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    if (!dlsym(lib, "nif_init")) {
        fprintf(stderr, "nif_init not exported: %s\n", dlerror());
        return 1;
    }
    printf("loaded %s under glibc %s: nif_init found\n", argv[1], gnu_get_libc_version());
    return 0;
}
