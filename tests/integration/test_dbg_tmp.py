from tests.integration.test_pipeline import _due_now, pipe, Fault, bodies  # noqa
def test_dbg(pipe):
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter")
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    r1 = pipe.send(received, ack=False)
    m = pipe.message(message_id)
    print("after1", r1, m.status, m.version, m.attempts, bodies(received))
    r2 = pipe.send(received)
    m = pipe.message(message_id)
    print("after2", r2, m.status, m.version, m.attempts, m.last_error, pipe.send_requests())
    assert 0
