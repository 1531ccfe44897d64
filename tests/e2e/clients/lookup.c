/* musl's resolver as a pod with an Alpine image has it: getaddrinfo (search
 * list, ndots, A and AAAA in parallel, no TCP retry before musl 1.2.4) and
 * res_query for the other types. Prints one answer per line, or "ERR ..."
 * and exits 3. Built with musl-gcc by the interoperability tests. */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static int addresses(const char *name) {
    struct addrinfo hints, *res, *p;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc) {
        printf("ERR %s\n", gai_strerror(rc));
        return 3;
    }
    for (p = res; p; p = p->ai_next) {
        char buf[INET6_ADDRSTRLEN];
        const void *a = p->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
                                                : (const void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        printf("%s\n", inet_ntop(p->ai_family, a, buf, sizeof buf));
    }
    freeaddrinfo(res);
    return 0;
}

static int query(const char *kind, const char *name) {
    int type = !strcmp(kind, "srv") ? ns_t_srv : !strcmp(kind, "txt") ? ns_t_txt
             : !strcmp(kind, "ptr") ? ns_t_ptr : !strcmp(kind, "cname") ? ns_t_cname
             : !strcmp(kind, "aaaa") ? ns_t_aaaa : ns_t_a;
    static unsigned char answer[65536];
    int n = res_query(name, ns_c_in, type, answer, sizeof answer);
    if (n < 0) {
        printf("ERR res_query failed (h_errno %d)\n", h_errno);
        return 3;
    }
    ns_msg msg;
    if (ns_initparse(answer, n, &msg) < 0) {
        printf("ERR unparsable reply\n");
        return 3;
    }
    for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
        ns_rr rr;
        char text[NS_MAXDNAME];
        if (ns_parserr(&msg, ns_s_an, i, &rr) < 0 || ns_rr_type(rr) != type)
            continue;
        const unsigned char *rd = ns_rr_rdata(rr);
        if (type == ns_t_a || type == ns_t_aaaa) {
            printf("%s\n", inet_ntop(type == ns_t_a ? AF_INET : AF_INET6, rd, text, sizeof text));
        } else if (type == ns_t_txt) {
            printf("%.*s\n", rd[0], rd + 1);
        } else if (type == ns_t_srv) {
            if (dn_expand(ns_msg_base(msg), ns_msg_end(msg), rd + 6, text, sizeof text) < 0)
                continue;
            printf("%d %d %d %s.\n", ns_get16(rd), ns_get16(rd + 2), ns_get16(rd + 4), text);
        } else if (dn_expand(ns_msg_base(msg), ns_msg_end(msg), rd, text, sizeof text) >= 0) {
            printf("%s.\n", text);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: lookup addr|a|aaaa|srv|txt|ptr|cname NAME\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    return !strcmp(argv[1], "addr") ? addresses(argv[2]) : query(argv[1], argv[2]);
}
