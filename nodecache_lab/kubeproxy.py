"""kube-proxy's nftables mode as text, for the emulated node (nodecache_lab.emunode).

Laid out as kube-proxy's pkg/proxy/nftables/proxier.go writes it (its test
fixture's base rules): a table per family named ``kube-proxy``; the
``services`` chain looking up ``daddr . l4proto . dport`` in the
``service-ips`` verdict map; a chain per service port choosing an endpoint
with ``numgen random mod N vmap``; a chain per endpoint with its ``dnat to``;
``cluster-ips-check`` rejecting new tracked traffic to ClusterIP ports it
does not serve (and dropping unallocated ClusterIPs), jumped from
``filter-forward`` and ``filter-output``; masquerade marks.
"""
from __future__ import annotations


def nftables_table(fam: str, services: list[tuple[str, str]], endpoints: list[str], service_cidr: str,
                   pod_cidr: str) -> str:
    """The ``fam`` ("ip" or "ip6") table for ``services`` ((ClusterIP, name)
    pairs, UDP and TCP 53 each), every one with ``endpoints`` (port 53)."""
    addr_type = "ipv4_addr" if fam == "ip" else "ipv6_addr"
    chains, elements = [], []
    for k, (ip, svc) in enumerate(services):
        for proto in ("udp", "tcp"):
            name = f"service-{k}{proto.upper()}-{svc}/{proto}/dns"
            eps = []
            for i, ep in enumerate(endpoints):
                ep_chain = f"endpoint-{k}{proto.upper()}{i}-{svc}/{proto}/dns__{ep.replace(':', '.')}/53"
                to = f"{ep}:53" if fam == "ip" else f"[{ep}]:53"
                chains.append(f"""\tchain {ep_chain} {{
\t\t{fam} saddr {ep} jump mark-for-masquerade
\t\tmeta l4proto {proto} dnat to {to}
\t}}
""")
                eps.append(f"{i} : goto {ep_chain}")
            chains.append(f"""\tchain {name} {{
\t\t{fam} daddr {ip} {fam} saddr != {pod_cidr} jump mark-for-masquerade
\t\tnumgen random mod {len(endpoints)} vmap {{ {", ".join(eps)} }}
\t}}
""")
            elements.append(f"{ip} . {proto} . 53 : goto {name}")
    ips = ", ".join(ip for ip, _ in services)
    return f"""table {fam} kube-proxy {{
\tcomment "rules for kube-proxy"
\tset cluster-ips {{ type {addr_type}; comment "Active ClusterIPs"; elements = {{ {ips} }} }}
\tset nodeport-ips {{ type {addr_type}; comment "IPs that accept NodePort traffic"; }}
\tmap firewall-ips {{ type {addr_type} . inet_proto . inet_service : verdict; }}
\tmap no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
\tmap no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : verdict; }}
\tmap service-ips {{ type {addr_type} . inet_proto . inet_service : verdict; elements = {{ {", ".join(elements)} }} }}
\tmap service-nodeports {{ type inet_proto . inet_service : verdict; }}
\tchain cluster-ips-check {{
\t\t{fam} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
\t\t{fam} daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"
\t}}
\tchain filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110; policy accept; ct state new jump firewall-check; }}
\tchain filter-output-pre-dnat {{ type filter hook output priority -110; policy accept; ct state new jump firewall-check; }}
\tchain filter-forward {{ type filter hook forward priority 0; policy accept; ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }}
\tchain filter-input {{ type filter hook input priority 0; policy accept; ct state new jump nodeport-endpoints-check; ct state new jump service-endpoints-check; }}
\tchain filter-output {{ type filter hook output priority 0; policy accept; ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }}
\tchain firewall-check {{ {fam} daddr . meta l4proto . th dport vmap @firewall-ips; }}
\tchain mark-for-masquerade {{ mark set mark or 0x4000; }}
\tchain masquerading {{ mark and 0x4000 == 0 return; mark set mark xor 0x4000; masquerade fully-random; }}
\tchain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
\tchain nat-postrouting {{ type nat hook postrouting priority 100; policy accept; jump masquerading; }}
\tchain nat-prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}
\tchain nodeport-endpoints-check {{ {fam} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports; }}
\tchain services {{
\t\t{fam} daddr . meta l4proto . th dport vmap @service-ips
\t\t{fam} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
\t}}
\tchain service-endpoints-check {{ {fam} daddr . meta l4proto . th dport vmap @no-endpoint-services; }}
{"".join(chains)}}}
"""
