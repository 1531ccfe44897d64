"""Truncation keeps every whole record that fits (dns.truncate), checked by a
parser we did not write (dnspython) over generated replies."""
import dns.flags
import dns.message
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from nodecache.dns.truncate import fit, records, truncate
from nodecache.dns.wire import make_query, question_bytes


def _reply(n_answer: int, n_auth: int = 0, n_extra: int = 0, edns: bool = False, size: int = 4) -> tuple:
    """A compressed reply (dnspython's own encoder) with n A/TXT records, and the query."""
    q = dns.message.make_query("www.example.com.", "TXT", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    if n_answer:
        r.answer.append(dns.rrset.from_text_list("www.example.com.", 300, "IN", "TXT",
                                                 [f'"{"x" * size}{i}"' for i in range(n_answer)]))
    if n_auth:
        r.authority.append(dns.rrset.from_text_list("example.com.", 300, "IN", "NS",
                                                    [f"ns{i}.example.com." for i in range(n_auth)]))
    if n_extra:
        r.additional.append(dns.rrset.from_text_list("ns0.example.com.", 300, "IN", "A",
                                                     [f"192.0.2.{i}" for i in range(n_extra)]))
    return r.to_wire(max_size=65535), q.to_wire()


def test_a_reply_that_fits_is_never_touched():
    reply, query = _reply(3)
    assert fit(reply, query, 512, len(query), -1) is reply


def test_plain_client_gets_the_answers_that_fit_in_512_bytes_and_tc():
    reply, query = _reply(40, size=20)
    out = fit(reply, query, 512, len(query), -1)
    msg = dns.message.from_wire(out)
    assert msg.flags & dns.flags.TC and len(out) <= 512
    kept = len(msg.answer[0])
    assert 0 < kept < 40
    assert [r.to_text() for r in msg.answer[0]] == [r.to_text() for r in dns.message.from_wire(reply).answer[0]][:kept]
    assert len(out) + 12 + 22 > 512  # one more 22-byte TXT record (pointer + 10 + rdata) would not fit


def test_the_clients_opt_stays_last_and_its_room_is_reserved():
    reply, query = _reply(80, edns=True, size=20)
    out = fit(reply, query, 512, len(query) - 11, 0)
    msg = dns.message.from_wire(out)
    assert msg.flags & dns.flags.TC and msg.edns == 0 and len(out) <= 512
    assert 0 < len(msg.answer[0]) < 80


def test_when_the_answer_is_cut_later_sections_go_too():
    reply, query = _reply(30, n_auth=2, n_extra=2, size=20)
    msg = dns.message.from_wire(fit(reply, query, 512, len(query), -1))
    assert msg.answer and not msg.authority and not msg.additional


def test_a_whole_answer_with_a_cut_authority_keeps_the_authority_records_that_fit():
    reply, query = _reply(2, n_auth=40)
    out = fit(reply, query, 512, len(query), -1)
    msg = dns.message.from_wire(out)
    assert len(msg.answer[0]) == 2 and 0 < len(msg.authority[0]) < 40 and msg.flags & dns.flags.TC


def test_unwalkable_or_hopeless_replies_fall_back_to_no_records():
    reply, query = _reply(40, size=20)
    empty = b"empty"
    assert truncate(reply[:-3], 512, len(query), empty) is empty        # last record cut short
    assert truncate(reply + b"\x00", 512, len(query), empty) is empty   # bytes after the records
    assert truncate(reply, 20, len(query), empty) is empty              # not even the question fits


def test_records_reads_sections_and_the_opt():
    reply, query = _reply(2, n_auth=1, n_extra=1, edns=True)
    recs = records(reply, len(query) - 11)
    assert [(section, is_opt) for _, _, section, is_opt in recs] == [
        (0, False), (0, False), (1, False), (2, False), (2, True)]
    assert recs[-1][1] == len(reply)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.integers(0, 8), st.integers(0, 8), st.booleans(), st.integers(1, 120),
       st.integers(512, 1400))
def test_any_cut_is_a_valid_message_of_whole_records_in_order(n_answer, n_auth, n_extra, edns, size, limit):
    reply, query = _reply(n_answer, n_auth, n_extra, edns, size)
    qend = len(query) - (11 if edns else 0)
    out = fit(reply, query, limit, qend, 0 if edns else -1)
    if len(reply) <= limit:
        assert out is reply
        return
    assert len(out) <= limit
    msg, orig = dns.message.from_wire(out), dns.message.from_wire(reply)
    assert msg.flags & dns.flags.TC and (msg.edns == 0) == edns
    flat = [rr.to_text() for section in (msg.answer, msg.authority, msg.additional) for rs in section for rr in rs]
    every = [rr.to_text() for section in (orig.answer, orig.authority, orig.additional) for rs in section for rr in rs]
    assert flat == every[:len(flat)]  # a prefix, in wire order, none skipped


def test_question_bytes_reply_round_trip():
    # the empty form carries the question: the client can match it
    query = make_query(7, question_bytes("www.example.com", 16))
    reply, _ = _reply(40, size=20)
    out = fit(reply[:2] + reply[2:], query, 512, len(query), -1)
    assert dns.message.from_wire(out).question[0].name.to_text() == "www.example.com."
