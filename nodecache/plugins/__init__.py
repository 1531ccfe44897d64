"""The Corefile's directives: one folder per plugin, one ordered registry.

As CoreDNS's ``plugin/<name>/`` and ``plugin.cfg``: each folder holds the
directive's grammar and frozen options (``setup``), its stage in the
query chain when it has one (``stage``), the metrics it owns, its README
(Name / Syntax / Metrics / Examples) and its tests; ``registry`` lists
the plugins in chain order, and that one list drives parsing, chain
order and ``nodecache check``. Engines stay libraries (``ttlcache/``,
``upstream/``), as CoreDNS keeps ``plugin/pkg/``; named apart from the directives they serve.
"""
