"""Every default of ``nodecache run`` in one place: the flags (``cli``), the
run parameters (``run.params.RunParams``) and the engines' own defaults
(``server.admission``, ``ttlcache.store``) all read these. No imports: the
command line loads this for every command, probes included."""

HANDOFF_DIR = "/run/nodecache"                 # shared by the old and new pod (a hostPath)
STATUS_SOCKET = "/tmp/nodecache.status.sock"   # private to a container: the probes ask this process
MAX_INFLIGHT = 4096                            # slow-path queries in progress at once, whole agent
MAX_INFLIGHT_PER_CLIENT = 512                  # one client's share of those
# slow-path starts per second per client: a quarter of a core's measured
# miss capacity (see server.admission)
MISS_RATE_PER_CLIENT = 5000.0
STORM_THRESHOLD = 10  # failing answers to one client's same question in 5 s before the rest is answered here (server.storms)
CACHE_BYTES = 64 << 20                         # all caches of an agent together
CACHE_MAX_ITEM = 16 << 10                      # records bytes; larger replies are served, not cached
SYNC_INTERVAL = 60.0                           # node-cache's -syncinterval
CONFIG_SYNC = 10.0                             # how often templates and the ConfigMap are re-read
HANDOFF_GRACE = 10.0
DRAIN = 5.0
METRICS_LISTEN = "0.0.0.0:9353"                # node-cache's -metrics-listen-address
# -udp-coalesce's window (s): the loop's timer tick at least; at most what the 4 MiB
# receive buffer holds at 300,000 queries/s
UDP_COALESCE_MIN, UDP_COALESCE_MAX = 0.001, 0.010
