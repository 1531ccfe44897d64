"""``nodecache run``: parameters, lifecycle, configuration source, status, persistence."""
