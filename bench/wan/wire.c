/* The emulated access link of the WAN benchmark (bench/wan): forwards Ethernet frames between
 * two interfaces, each direction its own link with a rate, a drop-tail buffer, a fixed one-way
 * delay and random loss.
 *
 *   wire IFACE_A IFACE_B RATE_BPS BUFFER_BYTES DELAY_US LOSS_PPM SEED
 *
 * A -> B and B -> A are modelled alike. A frame arriving at time t is lost with probability
 * LOSS_PPM / 10^6; otherwise it is dropped when the bytes still waiting to be serialised plus
 * its own exceed BUFFER_BYTES (drop-tail); otherwise it is serialised after those at RATE_BPS
 * (frame bytes, Ethernet header included) and handed to the other interface DELAY_US after its
 * last bit left. Compiled per run with the system cc (bench/wan/wire.py); this kernel has no
 * sch_netem, and a proxy that terminates TCP would hide the very queue being measured.
 *
 * On SIGTERM or SIGINT it prints one line per direction to stderr and exits:
 *   stats A>B in=N forwarded=N lost=N dropped=N send_errors=N socket_drops=N
 * SIGUSR1 prints the same lines and carries on. Each run of tail drops (frames dropped less
 * than 10 ms apart) is logged as it ends, with its time on CLOCK_MONOTONIC (the clock of the
 * bench's and vnet's own traces), so a late ping can be lined up with the loss behind it:
 *   drops A>B at=SECONDS span_ms=MS dropped=N
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME 65536

struct frame {
    uint64_t due_ns; /* when it reaches the far interface */
    uint32_t len;
    unsigned char *data;
};

struct link {
    const char *name;
    int in_fd, out_fd;
    /* FIFO of frames accepted and not yet delivered: serialising, or in the delay line. */
    struct frame *ring;
    size_t cap, head, count;
    uint64_t busy_until_ns; /* when the last accepted frame's last bit leaves */
    uint64_t in, forwarded, lost, dropped, send_errors;
    /* The current run of tail drops (frames dropped less than DROP_GAP_NS apart). */
    uint64_t run_start_ns, run_last_ns, run_dropped;
};

/* Tail drops this close together are one episode, logged as one line. */
#define DROP_GAP_NS 10000000u

static double rate_bps;
static uint64_t buffer_bytes, delay_ns;
static uint32_t loss_ppm;
static volatile sig_atomic_t stop_flag, stats_flag;

static void on_stop(int sig) { (void)sig; stop_flag = 1; }
static void on_stats(int sig) { (void)sig; stats_flag = 1; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int open_iface(const char *ifname) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) { perror("socket(AF_PACKET)"); exit(2); }
    unsigned idx = if_nametoindex(ifname);
    if (idx == 0) { fprintf(stderr, "wire: no interface %s\n", ifname); exit(2); }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)idx;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); exit(2); }
    /* A sender's burst (a whole congestion window at veth speed) must wait here, not be lost
     * in the socket before the emulated buffer has had its say. */
    int big = 32 * 1024 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
#ifdef PACKET_IGNORE_OUTGOING
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
#endif
    return fd;
}

static uint64_t socket_drops(int fd) {
    struct tpacket_stats st;
    socklen_t len = sizeof st;
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0) return 0;
    return st.tp_drops; /* reading resets the kernel's counter: callers accumulate */
}

static uint64_t sock_drops_total[2];

static void print_stats(struct link *l, int n) {
    for (int i = 0; i < n; i++) {
        sock_drops_total[i] += socket_drops(l[i].in_fd);
        fprintf(stderr,
                "stats %s in=%llu forwarded=%llu lost=%llu dropped=%llu send_errors=%llu "
                "socket_drops=%llu queued=%zu\n",
                l[i].name, (unsigned long long)l[i].in, (unsigned long long)l[i].forwarded,
                (unsigned long long)l[i].lost, (unsigned long long)l[i].dropped,
                (unsigned long long)l[i].send_errors, (unsigned long long)sock_drops_total[i],
                l[i].count);
    }
    fflush(stderr);
}

static void end_drop_run(struct link *l) {
    if (!l->run_dropped) return;
    fprintf(stderr, "drops %s at=%.3f span_ms=%.1f dropped=%llu\n", l->name,
            (double)l->run_start_ns / 1e9, (double)(l->run_last_ns - l->run_start_ns) / 1e6,
            (unsigned long long)l->run_dropped);
    fflush(stderr);
    l->run_dropped = 0;
}

static void tail_drop(struct link *l, uint64_t t) {
    l->dropped++;
    if (l->run_dropped && t - l->run_last_ns > DROP_GAP_NS) end_drop_run(l);
    if (!l->run_dropped) l->run_start_ns = t;
    l->run_dropped++;
    l->run_last_ns = t;
}

/* xorshift64*: the loss pattern is reproducible from the seed. */
static uint64_t rng_state;
static uint32_t rand_ppm(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32) % 1000000u;
}

static void accept_frame(struct link *l, const unsigned char *buf, uint32_t len, uint64_t t) {
    l->in++;
    if (loss_ppm && rand_ppm() < loss_ppm) { l->lost++; return; }
    uint64_t start = l->busy_until_ns > t ? l->busy_until_ns : t;
    /* Bytes not yet serialised, from how long the link stays busy. */
    uint64_t backlog = (uint64_t)((double)(start - t) * rate_bps / 8e9);
    if (backlog + len > buffer_bytes || l->count == l->cap) { tail_drop(l, t); return; }
    unsigned char *copy = malloc(len);
    if (!copy) { l->dropped++; return; }
    memcpy(copy, buf, len);
    uint64_t finish = start + (uint64_t)((double)len * 8e9 / rate_bps);
    l->busy_until_ns = finish;
    struct frame *f = &l->ring[(l->head + l->count) % l->cap];
    f->due_ns = finish + delay_ns;
    f->len = len;
    f->data = copy;
    l->count++;
}

static void deliver_due(struct link *l, uint64_t t) {
    while (l->count && l->ring[l->head].due_ns <= t) {
        struct frame *f = &l->ring[l->head];
        if (send(l->out_fd, f->data, f->len, 0) < 0) l->send_errors++;
        else l->forwarded++;
        free(f->data);
        l->head = (l->head + 1) % l->cap;
        l->count--;
    }
}

static void drain_input(struct link *l, unsigned char *buf) {
    for (int i = 0; i < 256; i++) {
        struct sockaddr_ll from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(l->in_fd, buf, MAX_FRAME, 0, (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) perror("recvfrom");
            return;
        }
        if (from.sll_pkttype == PACKET_OUTGOING) continue; /* our own sends, seen again */
        accept_frame(l, buf, (uint32_t)n, now_ns());
    }
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: wire IFACE_A IFACE_B RATE_BPS BUFFER_BYTES DELAY_US LOSS_PPM SEED\n");
        return 2;
    }
    rate_bps = strtod(argv[3], NULL);
    buffer_bytes = strtoull(argv[4], NULL, 10);
    delay_ns = strtoull(argv[5], NULL, 10) * 1000u;
    loss_ppm = (uint32_t)strtoul(argv[6], NULL, 10);
    rng_state = strtoull(argv[7], NULL, 10) | 1u;
    if (rate_bps <= 0 || buffer_bytes < 1514) {
        fprintf(stderr, "wire: rate must be > 0 and the buffer at least one frame (1514)\n");
        return 2;
    }
    int a = open_iface(argv[1]), b = open_iface(argv[2]);
    /* At most every buffered byte plus a delay line's worth, in the smallest frames. */
    size_t cap = (size_t)((buffer_bytes + rate_bps / 8 * ((double)delay_ns / 1e9)) / 60) + 1024;
    struct link links[2] = {
        {.name = "A>B", .in_fd = a, .out_fd = b, .cap = cap},
        {.name = "B>A", .in_fd = b, .out_fd = a, .cap = cap},
    };
    for (int i = 0; i < 2; i++) {
        links[i].ring = calloc(cap, sizeof(struct frame));
        if (!links[i].ring) { fprintf(stderr, "wire: out of memory\n"); return 2; }
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_stats;
    sigaction(SIGUSR1, &sa, NULL);
    static unsigned char buf[MAX_FRAME];
    struct pollfd pfd[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
    /* Real-time priority where allowed: the link's timing must not depend on what else the
     * (shared, small) machine is busy with. It sleeps in ppoll between frames, and the
     * kernel's RT throttling keeps a share of the CPU for everyone else in any case. */
    struct sched_param sp = {.sched_priority = 10};
    int rt = sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
    fprintf(stderr, "wire: ready %s <-> %s (%s)\n", argv[1], argv[2],
            rt ? "SCHED_FIFO" : "normal priority");
    fflush(stderr);
    while (!stop_flag) {
        if (stats_flag) { stats_flag = 0; print_stats(links, 2); }
        uint64_t t = now_ns(), next = UINT64_MAX;
        for (int i = 0; i < 2; i++) {
            deliver_due(&links[i], t);
            if (links[i].count && links[i].ring[links[i].head].due_ns < next)
                next = links[i].ring[links[i].head].due_ns;
        }
        struct timespec wait = {1, 0}, *wp = &wait; /* wake at least once a second for signals */
        if (next != UINT64_MAX) {
            uint64_t d = next > t ? next - t : 0;
            if (d < 1000000000u) { wait.tv_sec = 0; wait.tv_nsec = (long)d; }
        }
        int r = ppoll(pfd, 2, wp, NULL);
        if (r < 0 && errno != EINTR) { perror("ppoll"); return 1; }
        if (r > 0) {
            if (pfd[0].revents & POLLIN) drain_input(&links[0], buf);
            if (pfd[1].revents & POLLIN) drain_input(&links[1], buf);
        }
    }
    end_drop_run(&links[0]);
    end_drop_run(&links[1]);
    print_stats(links, 2);
    return 0;
}
