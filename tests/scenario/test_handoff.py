"""Hot handoff between real `nodecache run` processes under load, its
negative control, and the fault cases."""
import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from nodecache.emulated import client
from nodecache.cli import main
from nodecache.server import udppoll
from nodecache.emulated.upstream import ClusterDNS, FakeUpstream
from nodecache_lab.fakes import run
from nodecache_bench.procs import NAMES, AgentProc, Load, corefile


class Upstream:
    def __init__(self):
        self.times: list[float] = []
        dns = ClusterDNS(ttl=3600)

        def answer(data):
            self.times.append(time.monotonic())
            return dns.answer(data)
        self.server = FakeUpstream(answer, record=False)


async def _setup(tmp_path):
    up = Upstream()
    up_port = await up.server.start()
    port = client.free_port()
    conf = tmp_path / "Corefile"
    conf.write_text(corefile(port, up_port))
    return up, port, conf


async def _warm(port):
    for name in NAMES:
        for qtype in (QTYPE.A, QTYPE.AAAA):
            assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(name, qtype))).rr


def _hit_rate(load: Load, up: Upstream, start: float, end: float) -> float:
    asked = sum(1 for t in load.sent_times if start <= t < end)
    went_up = sum(1 for t in up.times if start <= t < end)
    return 1 - went_up / asked if asked else 1.0


async def _scenario(tmp_path, rounds: int, hot: bool):
    up, port, conf = await _setup(tmp_path)
    hdir = tmp_path / "handoff"
    agents = [AgentProc(tmp_path, conf, hdir, 0)]
    try:
        await agents[0].wait_for("serving")
        await _warm(port)
        load = Load(port, qps=5000)
        stop = asyncio.Event()
        load_task = asyncio.get_running_loop().create_task(load.run(stop, limit=120))
        await asyncio.sleep(1.0)
        steady = (time.monotonic() - 0.8, time.monotonic())
        marks = []
        for k in range(1, rounds + 1):
            donor = agents[-1]
            if hot:
                heir = AgentProc(tmp_path, conf, hdir, k)
                agents.append(heir)
                await heir.wait_for("READY sent")
                marks.append(time.monotonic())
                assert await donor.terminate() == 0, donor.text()
            else:
                assert await donor.terminate() == 0
                fresh = AgentProc(tmp_path, conf, hdir, k, "-handoff=false")
                agents.append(fresh)
                await fresh.wait_for("serving")
                marks.append(time.monotonic())
            await asyncio.sleep(0.35)
        stop.set()
        await load_task
        return load, up, steady, marks, agents
    finally:
        for a in agents:
            a.kill()
        await up.server.stop()


def test_zero_loss_across_30_handoffs_under_load(tmp_path):
    load, up, steady, marks, agents = run(_scenario(tmp_path, 30, hot=True), timeout=240)
    summary = (f"sent {load.sent} udp + {load.tcp_sent} tcp, answered {load.answered} + {load.tcp_answered}, "
               f"unanswered {load.unanswered}, dup {load.duplicates}, errors {load.errors}, "
               f"tcp retries {load.tcp_retries}")
    print(summary)
    assert load.sent >= 5000 * 10 and load.tcp_sent > 100
    assert load.unanswered == 0 and load.duplicates == 0 and load.errors == 0, summary
    assert load.answered == load.sent and load.tcp_answered == load.tcp_sent, summary
    before = _hit_rate(load, up, *steady)
    after = [_hit_rate(load, up, t, t + 0.3) for t in marks]
    assert min(after) >= 0.95 * before, (before, after)
    assert "handed off: drained" in agents[0].text()
    assert "took 2 sockets and 400 cache entries" in agents[1].text()


def test_negative_control_stop_then_start_loses_queries(tmp_path):
    load, up, steady, marks, agents = run(_scenario(tmp_path, 3, hot=False), timeout=120)
    assert load.unanswered > 0, "the harness must be able to see loss"


def test_handoff_status_and_stale_socket(tmp_path, capsys):
    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = tmp_path / "handoff"
        hdir.mkdir(mode=0o700)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stale.bind(str(hdir / "handoff.sock"))
        stale.close()  # the file stays, nobody listens: a crashed agent's leftover
        agent = AgentProc(tmp_path, conf, hdir, 0)
        try:
            await agent.wait_for("serving")
            assert "no process behind it (stale); starting cold" in agent.text()
            assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(NAMES[0], 1))).rr
            code = await asyncio.to_thread(main, ["handoff", "status", "-handoff-dir", str(hdir)])
            assert code == 0
        finally:
            agent.kill()
            await up.server.stop()
    run(go())
    out = capsys.readouterr().out
    assert "holds 2 sockets" in out and "1 cache entries" in out


def test_two_heirs_at_once_end_with_one_owner(tmp_path, capsys):
    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = tmp_path / "handoff"
        first = AgentProc(tmp_path, conf, hdir, 0)
        agents = [first]
        try:
            await first.wait_for("serving")
            a, b = AgentProc(tmp_path, conf, hdir, 1), AgentProc(tmp_path, conf, hdir, 2)
            agents += [a, b]
            await a.wait_for("READY sent")
            await b.wait_for("READY sent")
            for _ in range(100):  # a donor logs its drain just after its heir's READY
                handed = [x for x in agents if "handed off: drained" in x.text()]
                if len(handed) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(handed) == 2  # two donors gave up their sockets, exactly one owner remains
            owner = [x for x in agents if x not in handed][0]
            for x in handed:
                assert await x.terminate() == 0
                assert "interface and rules belong to the successor" in x.text()
            assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(NAMES[1], 1))).rr
            code = await asyncio.to_thread(main, ["handoff", "status", "-handoff-dir", str(hdir)])
            return code, owner.proc.pid
        finally:
            for x in agents:
                x.kill()
            await up.server.stop()
    code, pid = run(go(), timeout=60)
    assert code == 0 and f"pid {pid} holds" in capsys.readouterr().out


def test_heir_dying_before_ready_leaves_donor_untouched(tmp_path):
    from nodecache.handoff.heir import take_over

    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = tmp_path / "handoff"
        donor = AgentProc(tmp_path, conf, hdir, 0)
        try:
            await donor.wait_for("serving")
            await _warm(port)
            take = await asyncio.to_thread(take_over, str(hdir))
            assert take is not None and len(take.sockets) == 2 and take.entries == 400
            take.abandon()  # the heir "crashes" holding the FDs, before READY
            await donor.wait_for("aborted before READY")
            assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(NAMES[2], 1))).rr
            heir = AgentProc(tmp_path, conf, hdir, 1)  # a later heir still works
            await heir.wait_for("READY sent")
            heir.kill()
        finally:
            donor.kill()
            await up.server.stop()
    run(go(), timeout=60)


def test_donor_killed_mid_drain_heir_serves(tmp_path):
    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = tmp_path / "handoff"
        donor = AgentProc(tmp_path, conf, hdir, 0)
        heir = None
        try:
            await donor.wait_for("serving")
            heir = AgentProc(tmp_path, conf, hdir, 1)
            await heir.wait_for("READY sent")
            donor.kill()  # SIGKILL while draining
            for name in NAMES[:20]:
                assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(name, 1))).rr
            assert DNSRecord.parse(await client.tcp("127.0.0.1", port, client.build(NAMES[0], 1))).rr
        finally:
            donor.kill()
            if heir:
                heir.kill()
            await up.server.stop()
    run(go(), timeout=60)


def test_older_revision_takes_over_rollback_and_other_uid_is_refused(tmp_path, monkeypatch):
    from nodecache.handoff import protocol
    from nodecache.handoff.heir import take_over

    import shutil
    import tempfile
    from pathlib import Path
    base = Path(tempfile.mkdtemp(prefix="nodecache-uid-", dir="/tmp"))  # reachable by another uid
    os.chmod(base, 0o755)

    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = base / "handoff"
        donor = AgentProc(tmp_path, conf, hdir, 0)
        try:
            await donor.wait_for("serving")
            await _warm(port)
            # a rollback: an older revision takes the sockets and the cache (shared format)...
            monkeypatch.setattr(protocol, "REVISION", 1)
            monkeypatch.setattr("nodecache.handoff.heir.REVISION", 1)
            take = await asyncio.to_thread(take_over, str(hdir))
            assert take is not None and len(take.sockets) == 2 and take.entries == 400
            assert sum(len(v) for v in take.cache(0.0).values()) == 400
            take.abandon()
            await donor.wait_for("a rollback")
            await donor.wait_for("aborted before READY")
            # ... and one that reads no snapshot format of ours still takes the sockets, cold
            from nodecache.ttlcache import snapshot
            monkeypatch.setattr(snapshot, "FORMATS", (7,))
            take = await asyncio.to_thread(take_over, str(hdir))
            assert take is not None and len(take.sockets) == 2 and take.entries == 0 and not take.snapshot
            take.abandon()
            await donor.wait_for("no snapshot format in common")
            if os.geteuid() == 0:
                os.chmod(hdir, 0o755)  # let another uid reach the socket, to test the donor's own check
                os.chmod(hdir / "handoff.sock", 0o777)
                reply = await asyncio.to_thread(_hello_as_nobody, str(hdir / "handoff.sock"))
                assert b"different uid" in reply, reply
            assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(NAMES[3], 1))).rr
        finally:
            donor.kill()
            await up.server.stop()
            shutil.rmtree(base, ignore_errors=True)
    run(go(), timeout=60)


def _hello_as_nobody(path: str) -> bytes:
    """Fork a child that drops to uid 65534 and says HELLO; returns the donor's answer."""
    from nodecache.handoff.protocol import HELLO, REVISION, VERSION, control
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: plain syscalls only, then _exit
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(5)
            s.connect(path)
            s.sendall(control(HELLO, version=VERSION, revision=REVISION, pid=os.getpid()))
            os.write(w, s.recv(65536))
        except BaseException as exc:  # report anything to the parent
            os.write(w, repr(exc).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out


async def _heir_dies_after_ready(tmp_path, grace: str, sigterm_donor: bool = False, restart_heir: bool = False):
    """Donor A hands over to heir B under load; B is SIGKILLed 1 s after READY.
    ``sigterm_donor``: A gets SIGTERM right after READY, as a rolling update does.
    Returns the load, how long A took to resume, A, and when B was dead."""
    up, port, conf = await _setup(tmp_path)
    hdir = tmp_path / "handoff"
    donor = AgentProc(tmp_path, conf, hdir, 0, "-handoff-grace", grace)
    heir = None
    try:
        await donor.wait_for("serving")
        await _warm(port)
        load = Load(port, qps=2000)
        stop = asyncio.Event()
        load_task = asyncio.get_running_loop().create_task(load.run(stop, limit=60))
        await asyncio.sleep(0.5)
        heir = AgentProc(tmp_path, conf, hdir, 1)
        await heir.wait_for("READY sent")
        if sigterm_donor:
            donor.proc.terminate()
        await asyncio.sleep(1.0)
        heir.kill()                                   # SIGKILL: no teardown, no goodbye
        t_kill = time.monotonic()
        resumed = None
        while time.monotonic() - t_kill < 3:
            if "serving again" in donor.text():
                resumed = time.monotonic() - t_kill
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.0)
        if restart_heir:  # the DaemonSet restarts the dead container: it takes over again
            heir = AgentProc(tmp_path, conf, hdir, 2)
            await heir.wait_for("READY sent")
            await asyncio.sleep(0.5)
        stop.set()
        await load_task
        if restart_heir:
            for _ in range(200):
                if donor.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        return load, resumed, donor, t_kill
    finally:
        donor.kill()
        if heir:
            heir.kill()
        await up.server.stop()


# A SIGKILLed process loses the datagrams it had read and not yet answered
# (at most one poll's worth, read just before it died); in any design only
# the client's retry recovers those. Everything else must be answered: a
# query that reached the socket after the kill, or waited in it, is the
# donor's to read.
HELD = 0.25   # seconds: the oldest query the heir can have had in hand at its death


def _lost_beyond_the_dead_heirs_hands(load, t_kill: float) -> str:
    """Why some unanswered query cannot have been in the killed heir's hands, or '' when all could."""
    outside = [round(t - t_kill, 3) for t in load.lost_sent_at if not t_kill - HELD <= t <= t_kill]
    if outside or load.unanswered > udppoll.POLL_BUDGET:
        return (f"{load.unanswered} unanswered of {load.sent}; sent at (s from the kill): "
                f"{sorted(round(t - t_kill, 3) for t in load.lost_sent_at)[:20]}")
    return ""


def test_heir_killed_after_ready_donor_resumes_with_its_cache_and_loses_nothing(tmp_path):
    load, resumed, donor, t_kill = run(_heir_dies_after_ready(tmp_path, "10"), timeout=90)
    text = donor.text()
    summary = f"sent {load.sent}, answered {load.answered}, unanswered {load.unanswered}, resumed after {resumed}"
    assert resumed is not None and resumed < 0.5, summary + text
    assert not (why := _lost_beyond_the_dead_heirs_hands(load, t_kill)), why
    assert load.answered + load.unanswered == load.sent, summary
    assert "resuming service with our cache" in text and "(400 cache entries)" in text, text
    assert "serving again" in text


def test_heir_killed_while_the_donor_is_being_terminated_donor_resumes_until_the_heir_is_back(tmp_path):
    load, resumed, donor, t_kill = run(_heir_dies_after_ready(tmp_path, "3", sigterm_donor=True, restart_heir=True),
                                       timeout=90)
    text = donor.text()
    assert "able to resume until the grace period ends" in text and resumed is not None, text
    assert "serving until a new agent takes over" in text, text
    assert not (why := _lost_beyond_the_dead_heirs_hands(load, t_kill)), why
    assert load.answered + load.unanswered == load.sent, (load.sent, load.unanswered)
    # the restarted heir took over from us, and only then did we honour the stop
    assert donor.proc.returncode == 0 and text.count("READY after") == 2, text


def test_negative_control_without_grace_the_heirs_death_loses_queries(tmp_path):
    load, resumed, donor, t_kill = run(_heir_dies_after_ready(tmp_path, "0"), timeout=90)
    assert resumed is None and _lost_beyond_the_dead_heirs_hands(load, t_kill), donor.text()


# A release with handoff protocol revision 1 (commit 787473d): a rollout undo
# hands over from this release to that code, taken from git history.
PREVIOUS_RELEASE = "787473d"


def _previous_release(tmp_path):
    import subprocess
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    dest = tmp_path / "previous"
    dest.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", PREVIOUS_RELEASE, "nodecache"],
                                 capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the previous release is not in this checkout's git history: {exc}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=30)
    return dest


class _OldAgentProc(AgentProc):
    """`nodecache run` of the previous release. -S keeps the editable install's
    import hook (which maps `nodecache` to this checkout) out; the venv's
    site-packages still provide the dependencies."""

    def __init__(self, code, tmp, conf, handoff_dir, n):
        import subprocess
        import sys
        import sysconfig
        self.log = tmp / f"agent{n}.log"
        env = dict(os.environ, PYTHONPATH=f"{code}:{sysconfig.get_paths()['purelib']}")
        self.proc = subprocess.Popen([sys.executable, "-S", "-m", "nodecache", "run", "-conf", str(conf),
                                      "-handoff-dir", str(handoff_dir), "-drain", "2",
                                      "-metrics-listen-address", "", "-status-socket", str(tmp / f"s{n}")],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env, cwd=tmp)


def test_rollback_to_the_previous_release_under_load_loses_nothing(tmp_path):
    old_code = _previous_release(tmp_path)

    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = tmp_path / "handoff"
        donor = AgentProc(tmp_path, conf, hdir, 0)
        heir = None
        try:
            await donor.wait_for("serving")
            await _warm(port)
            load = Load(port, qps=3000)
            stop = asyncio.Event()
            load_task = asyncio.get_running_loop().create_task(load.run(stop, limit=60))
            await asyncio.sleep(0.5)
            heir = _OldAgentProc(old_code, tmp_path, conf, hdir, 1)
            await heir.wait_for("READY sent")
            assert await donor.terminate() == 0, donor.text()
            await asyncio.sleep(1.0)
            stop.set()
            await load_task
            return load, donor.text(), heir.text()
        finally:
            donor.kill()
            if heir:
                heir.kill()
            await up.server.stop()
    load, donor_log, heir_log = run(go(), timeout=90)
    summary = f"sent {load.sent} + {load.tcp_sent} tcp, unanswered {load.unanswered}, errors {load.errors}"
    print(summary)
    assert "a rollback" in donor_log, donor_log
    assert "took 2 sockets and 400 cache entries" in heir_log, heir_log
    assert load.sent > 3000 and load.unanswered == 0 and load.errors == 0, summary
    assert load.answered == load.sent and load.tcp_answered == load.tcp_sent, summary


def test_handoff_reload_replaces_the_process_and_the_old_one_exits(tmp_path, capsys):
    """`systemctl reload` runs `nodecache handoff reload`: afterwards exactly one agent remains."""
    from nodecache.handoff.control import status as handoff_status

    async def go():
        up, port, conf = await _setup(tmp_path)
        hdir = tmp_path / "handoff"
        old = AgentProc(tmp_path, conf, hdir, 0)
        new_pid = None
        try:
            await old.wait_for("serving")
            await _warm(port)
            code = await asyncio.to_thread(main, ["handoff", "reload", "-handoff-dir", str(hdir)])
            assert code == 0
            new_pid = handoff_status(str(hdir))["pid"]
            assert new_pid != old.proc.pid
            for _ in range(100):  # the old one: grace 0.3 s + drain, then gone
                if old.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert old.proc.returncode == 0, old.text()
            assert DNSRecord.parse(await client.udp("127.0.0.1", port, client.build(NAMES[1], 1))).rr
        finally:
            old.kill()
            if new_pid:
                os.kill(new_pid, 9)
            await up.server.stop()
    run(go(), timeout=60)
    assert "took over from pid" in capsys.readouterr().out


def test_publishing_in_an_existing_directory_keeps_its_mode(tmp_path):
    import stat
    from nodecache.handoff.donor import publish
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    sock = publish(shared / "handoff.sock")
    try:
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
        assert stat.S_IMODE(os.stat(shared / "handoff.sock").st_mode) == 0o600
        fresh = tmp_path / "new" / "dir"
        sock2 = publish(fresh / "handoff.sock")
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
        sock2.close()
    finally:
        sock.close()


async def test_donor_waits_for_a_slow_but_live_heir_instead_of_giving_up(monkeypatch):
    from nodecache.handoff import donor as donor_mod
    from nodecache.handoff.protocol import READY, control
    monkeypatch.setattr(donor_mod, "READY_NAG", 0.05)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    d = donor_mod.Donor(None, "/nonexistent", None)

    async def slow_heir():
        await asyncio.sleep(0.3)  # six nag periods
        theirs.sendall(control(READY, pid=1))
    task = asyncio.get_running_loop().create_task(slow_heir())
    got = await asyncio.wait_for(d._wait_ready(ours, 1), 5)
    await task
    assert got.startswith(READY)
    for s in (ours, theirs):
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a donor as another uid")
def test_heir_refuses_a_donor_of_another_uid(tmp_path):
    from nodecache.handoff.heir import take_over
    from nodecache.handoff.protocol import ProtocolError
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="nodecache-uid-", dir="/tmp"))
    os.chmod(base, 0o777)
    path = base / "handoff.sock"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a "donor" owned by nobody: listen, say when ready, wait
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.bind(str(path))
            s.listen(1)
            os.write(w, b"x")
            conn, _ = s.accept()
            conn.recv(100)
        finally:
            os._exit(0)
    try:
        os.read(r, 1)
        with pytest.raises(ProtocolError, match="runs as uid 65534"):
            take_over(str(base))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        import shutil
        shutil.rmtree(base, ignore_errors=True)
