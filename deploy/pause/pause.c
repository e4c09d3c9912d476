/*
 * Sluice's pause program, for the pause image deploy/build-image makes (no image can be
 * pulled here, so the Pod sandbox's image is built too). It holds the Pod's namespaces
 * open: it sleeps until SIGINT or SIGTERM (then exits 0), and reaps any child that is
 * re-parented to it, as PID 1 of a Pod must. `-v` prints its version.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("sluice-pause 0.1.0");
        return 0;
    }
    if (getpid() != 1) {
        fputs("sluice-pause: not PID 1; reaping only my own children\n", stderr);
    }
    struct sigaction stop = {0};
    stop.sa_handler = on_stop;
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    struct sigaction child = {0};
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &child, NULL);
    for (;;) {
        pause();
    }
}
