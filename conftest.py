"""Shared by every test directory (tests/, the plugins' own tests beside them)."""
import inspect


def pytest_pyfunc_call(pyfuncitem):
    """``async def test_...`` runs on uvloop (the product's loop), bounded in
    time like ``nodecache_lab.fakes.run``: scenario tests need no wrapper of their own."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    from nodecache_lab.fakes import run
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    run(pyfuncitem.obj(**args), timeout=ASYNC_TEST_TIMEOUT)
    return True


ASYNC_TEST_TIMEOUT = 60.0
