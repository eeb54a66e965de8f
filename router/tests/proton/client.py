"""Qpid Proton clients for the router's end-to-end tests (driven by router/tests/proton/main.rs).

Usage: client.py SCENARIO URL [ARGS...]; prints one JSON line per observation and exits 0 on success.
"""
import json
import sys

from proton import Message, SSLDomain
from proton.handlers import MessagingHandler
from proton.reactor import Container


def emit(**kw):
    print(json.dumps(kw), flush=True)


class Consume(MessagingHandler):
    """Receives COUNT messages from ADDRESS, printing each with its properties, accepting them."""

    def __init__(self, url, address, count, timeout):
        super().__init__(auto_accept=False)
        self.url, self.address, self.count, self.timeout = url, address, int(count), float(timeout)
        self.got = 0

    def on_start(self, event):
        conn = event.container.connect(self.url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
        event.container.create_receiver(conn, self.address)
        self.timer = event.container.schedule(self.timeout, self)

    def on_link_opened(self, event):
        if event.receiver:
            emit(opened=self.address)

    def on_message(self, event):
        m = event.message
        body = m.body
        if isinstance(body, (bytes, memoryview)):
            body = bytes(body).decode("utf-8", "replace")
        emit(body=body, content_type=m.content_type, properties=m.properties or {},
             annotations={str(k): v for k, v in (m.annotations or {}).items()})
        self.accept(event.delivery)
        self.got += 1
        if self.got >= self.count:
            self.timer.cancel()
            event.connection.close()

    def on_link_error(self, event):
        cond = event.link.remote_condition
        emit(link_error=cond.name if cond else None)
        self.timer.cancel()
        event.connection.close()

    def on_transport_error(self, event):
        cond = event.transport.condition
        emit(transport_error=cond.name if cond else None, description=cond.description if cond else None)

    def on_timer_task(self, event):
        emit(timeout=True, got=self.got)
        event.container.stop()


class ConsumeTls(Consume):
    """Like consume, over AMQPS (URL amqps://...): trusts only the CA in CA_PATH and checks the host name."""

    def __init__(self, url, ca_path, address, count, timeout):
        super().__init__(url, address, count, timeout)
        self.ca_path = ca_path

    def on_start(self, event):
        domain = SSLDomain(SSLDomain.MODE_CLIENT)
        domain.set_trusted_ca_db(self.ca_path)
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
        conn = event.container.connect(self.url, ssl_domain=domain, allowed_mechs="PLAIN")
        event.container.create_receiver(conn, self.address)
        self.timer = event.container.schedule(self.timeout, self)


class Refused(MessagingHandler):
    """Attaches receivers to each ADDRESS in turn on one session; prints each link's fate."""

    def __init__(self, url, *addresses):
        super().__init__()
        self.url, self.addresses = url, list(addresses)

    def on_start(self, event):
        self.conn = event.container.connect(self.url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
        self.next(event.container)
        self.timer = event.container.schedule(5, self)

    def next(self, container):
        if not self.addresses:
            self.timer.cancel()
            self.conn.close()
            return
        self.current = self.addresses.pop(0)
        container.create_receiver(self.conn, self.current)

    def on_link_opened(self, event):
        if event.receiver and event.receiver.remote_source.address:
            emit(address=self.current, result="opened")
            event.receiver.close()
            self.next(event.container)

    def on_link_error(self, event):
        cond = event.link.remote_condition
        emit(address=self.current, result=cond.name if cond else "closed")
        self.next(event.container)

    def on_transport_error(self, event):
        cond = event.transport.condition
        emit(transport_error=cond.name if cond else None, description=cond.description if cond else None)

    def on_timer_task(self, event):
        emit(timeout=True)
        event.container.stop()


class SendCommand(MessagingHandler):
    """Sends one command to DEVICE of TENANT (request/response) and prints its outcome and the response."""

    def __init__(self, url, tenant, device, name, payload, timeout="10"):
        super().__init__(auto_accept=False)
        self.url, self.tenant, self.device, self.name, self.payload = url, tenant, device, name, payload
        self.timeout = float(timeout)
        self.reply = "command_response/%s/proton-replies" % tenant
        self.sent = False
        self.outcome = self.response = False

    def on_start(self, event):
        conn = event.container.connect(self.url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
        self.receiver = event.container.create_receiver(conn, self.reply)
        self.sender = event.container.create_sender(conn, "command/%s" % self.tenant)
        self.timer = event.container.schedule(self.timeout, self)

    def on_sendable(self, event):
        if self.sent or not self.receiver.state & self.receiver.REMOTE_ACTIVE:
            return
        msg = Message(address="command/%s/%s" % (self.tenant, self.device), subject=self.name,
                      id="cmd-1", reply_to=self.reply, body=self.payload.encode("utf-8"),
                      content_type="application/json")
        event.sender.send(msg)
        self.sent = True

    def on_link_opened(self, event):
        if event.receiver:
            emit(opened=self.reply)

    def on_accepted(self, event):
        emit(outcome="accepted")
        self.outcome = True
        if self.response:
            self.done(event)

    def on_released(self, event):
        emit(outcome="released")
        self.done(event)

    def on_rejected(self, event):
        emit(outcome="rejected")
        self.done(event)

    def on_message(self, event):
        m = event.message
        body = m.body
        if isinstance(body, (bytes, memoryview)):
            body = bytes(body).decode("utf-8", "replace")
        emit(response=body, correlation_id=m.correlation_id, properties=m.properties or {})
        self.accept(event.delivery)
        self.response = True
        # The response may overtake the command's outcome: wait for both.
        if self.outcome:
            self.done(event)

    def done(self, event):
        self.timer.cancel()
        event.connection.close()

    def on_timer_task(self, event):
        emit(timeout=True)
        event.container.stop()


if __name__ == "__main__":
    scenario, url, *args = sys.argv[1:]
    handler = {"consume": Consume, "consume_tls": ConsumeTls, "refused": Refused, "command": SendCommand}[scenario](url, *args)
    Container(handler).run()
