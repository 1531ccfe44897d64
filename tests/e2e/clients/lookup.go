// Go's own resolver (PreferGo, GODEBUG=netdns=go), as a static Go binary in
// a pod uses it: search list and ndots from /etc/resolv.conf, A and AAAA in
// parallel, TCP after a truncated reply. Prints one answer per line, or
// "ERR ..." and exits 3. Built by the interoperability tests.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: lookup addr|a|aaaa|srv|txt|ptr|cname NAME")
		os.Exit(2)
	}
	kind, name := os.Args[1], os.Args[2]
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []string
	var err error
	switch kind {
	case "addr":
		out, err = r.LookupHost(ctx, name)
	case "a", "aaaa":
		network := map[string]string{"a": "ip4", "aaaa": "ip6"}[kind]
		var ips []net.IP
		ips, err = r.LookupIP(ctx, network, name)
		for _, ip := range ips {
			out = append(out, ip.String())
		}
	case "srv":
		var srvs []*net.SRV
		_, srvs, err = r.LookupSRV(ctx, "", "", name)
		for _, s := range srvs {
			out = append(out, fmt.Sprintf("%d %d %d %s", s.Priority, s.Weight, s.Port, s.Target))
		}
	case "txt":
		out, err = r.LookupTXT(ctx, name)
	case "ptr":
		out, err = r.LookupAddr(ctx, name)
	case "cname":
		var c string
		c, err = r.LookupCNAME(ctx, name)
		out = []string{c}
	default:
		fmt.Fprintln(os.Stderr, "unknown kind", kind)
		os.Exit(2)
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(3)
	}
	for _, o := range out {
		fmt.Println(o)
	}
}
