"""Tools for tests, benchmarks and the demo, never imported by the serving
agent: a DNS client (``client``), a scriptable fake upstream
(``fakeupstream``) and an emulated Kubernetes node in network namespaces
(``emunode``)."""
