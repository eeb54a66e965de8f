"""A business application written with Qpid Proton (Python), for Ferry's end-to-end stories.

Usage:
  proton_app.py consume URL ADDRESS COUNT TIMEOUT
      receive COUNT messages from ADDRESS (e.g. telemetry/TENANT), accepting each
  proton_app.py consume-raw URL ADDRESS COUNT TIMEOUT
      the same, and each message also carries "raw": the hex of the whole encoded message as it came
      off the wire (the payloads of the delivery's transfer frames, concatenated), before Proton
      decoded it
  proton_app.py hold URL ADDRESS CREDIT TIMEOUT
      receive from ADDRESS with CREDIT and settle nothing (an application that hangs, or is about to
      crash), until TIMEOUT
  proton_app.py command URL TENANT DEVICE NAME PAYLOAD TIMEOUT
      send a request/response command to DEVICE, again while it is `released` (device not reachable
      yet), and wait for the device's response

URL is amqp://USER:PASSWORD@HOST:PORT (SASL PLAIN), or amqps://... for TLS: the server's certificate is
verified (chain and host name) against the CA file in $PROTON_TRUSTED_CA when that is set, else against
the system's CAs. Prints one JSON object a line, e.g.
{"attached": "telemetry/t1"}, {"message": {...}}, {"link_error": "amqp:unauthorized-access"},
{"outcome": "accepted"}, {"response": {...}}, and last {"done": N} or {"timeout": true, "got": N}.
"""
import json
import os
import sys
import weakref

from proton import Message, SSLDomain
from proton.handlers import IncomingMessageHandler, MessagingHandler
from proton.reactor import Container


def emit(**kw):
    print(json.dumps(kw, default=str), flush=True)


def text(body):
    if isinstance(body, (bytes, memoryview)):
        return bytes(body).decode("utf-8", "replace")
    return body


def describe(m):
    return {
        "body": text(m.body),
        "content_type": m.content_type,
        "to": m.address,
        "durable": m.durable,
        "creation_time": m.creation_time,
        "correlation_id": m.correlation_id,
        "properties": m.properties or {},
        "annotations": {str(k): v for k, v in (m.annotations or {}).items()},
    }


def connect(event, url):
    ssl_domain = None
    ca = os.environ.get("PROTON_TRUSTED_CA")
    if ca:
        ssl_domain = SSLDomain(SSLDomain.MODE_CLIENT)
        ssl_domain.set_trusted_ca_db(ca)
        ssl_domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME, ca)
    return event.container.connect(url, allowed_mechs="PLAIN", allow_insecure_mechs=True,
                                   ssl_domain=ssl_domain)


class Consume(MessagingHandler):
    def __init__(self, url, address, count, timeout):
        super().__init__(auto_accept=False)
        self.url, self.address, self.count, self.timeout = url, address, int(count), float(timeout)
        self.got = 0

    def on_start(self, event):
        event.container.create_receiver(connect(event, self.url), self.address)
        self.timer = event.container.schedule(self.timeout, self)

    def on_link_opened(self, event):
        if event.receiver and event.receiver.remote_source.address:
            emit(attached=self.address)

    def on_message(self, event):
        self.emit_message(event)
        self.accept(event.delivery)
        self.got += 1
        if self.got >= self.count:
            emit(done=self.got)
            self.timer.cancel()
            event.connection.close()

    def emit_message(self, event):
        emit(message=describe(event.message))

    def on_link_error(self, event):
        cond = event.link.remote_condition
        emit(link_error=cond.name if cond else None, description=cond.description if cond else None)
        self.timer.cancel()
        event.connection.close()

    def on_transport_error(self, event):
        cond = event.transport.condition
        emit(transport_error=cond.name if cond else None, description=cond.description if cond else None)

    def on_timer_task(self, event):
        emit(timeout=True, got=self.got)
        event.container.stop()


class KeepRaw(IncomingMessageHandler):
    """Proton's IncomingMessageHandler, except that a complete delivery is read here: its bytes (what
    Proton concatenated from the transfer frames) are kept as event.raw, then decoded as Proton does."""

    def on_delivery(self, event):
        dlv = event.delivery
        if dlv.link.is_receiver and not dlv.aborted and dlv.readable and not dlv.partial:
            event.raw = dlv.link.recv(dlv.pending)
            dlv.link.advance()
            event.message = Message()
            event.message.decode(event.raw)
            self.on_message(event)
        else:
            super().on_delivery(event)


class ConsumeRaw(Consume):
    def __init__(self, url, address, count, timeout):
        super().__init__(url, address, count, timeout)
        # MessagingHandler reads deliveries in its IncomingMessageHandler child: swap in KeepRaw.
        self.handlers = [KeepRaw(False, weakref.proxy(self)) if isinstance(h, IncomingMessageHandler)
                         else h for h in self.handlers]

    def emit_message(self, event):
        emit(message=dict(describe(event.message), raw=bytes(event.raw).hex()))


class Hold(MessagingHandler):
    def __init__(self, url, address, credit, timeout):
        super().__init__(prefetch=int(credit), auto_accept=False, auto_settle=False)
        self.url, self.address, self.timeout = url, address, float(timeout)
        self.got = 0

    def on_start(self, event):
        event.container.create_receiver(connect(event, self.url), self.address)
        event.container.schedule(self.timeout, self)

    def on_link_opened(self, event):
        if event.receiver and event.receiver.remote_source.address:
            emit(attached=self.address)

    def on_message(self, event):
        self.got += 1
        emit(message=describe(event.message), held=self.got)

    def on_timer_task(self, event):
        emit(timeout=True, got=self.got)
        event.container.stop()


class Command(MessagingHandler):
    def __init__(self, url, tenant, device, name, payload, timeout):
        super().__init__(auto_accept=False)
        self.url, self.tenant, self.device, self.name, self.payload = url, tenant, device, name, payload
        self.timeout = float(timeout)
        self.reply = "command_response/%s/proton-%s" % (tenant, device)
        self.accepted = self.responded = False
        self.attempt = 0

    def on_start(self, event):
        conn = connect(event, self.url)
        self.receiver = event.container.create_receiver(conn, self.reply)
        self.sender = event.container.create_sender(conn, "command/%s" % self.tenant)
        self.timer = event.container.schedule(self.timeout, self)

    def send(self):
        self.attempt += 1
        self.sender.send(Message(address="command/%s/%s" % (self.tenant, self.device), subject=self.name,
                                 id="cmd-%d" % self.attempt, reply_to=self.reply,
                                 body=self.payload.encode("utf-8"), content_type="application/json"))

    def on_link_opened(self, event):
        if event.receiver:
            emit(attached=self.reply)

    def on_sendable(self, event):
        if self.attempt == 0 and self.receiver.state & self.receiver.REMOTE_ACTIVE:
            self.send()

    def on_link_error(self, event):
        cond = event.link.remote_condition
        emit(link_error=cond.name if cond else None, description=cond.description if cond else None)
        self.timer.cancel()
        event.connection.close()

    def on_accepted(self, event):
        emit(outcome="accepted", attempt=self.attempt)
        self.accepted = True
        if self.responded:
            self.finish(event)

    def on_released(self, event):
        # Not deliverable now (device not connected or not waiting): an application may retry.
        emit(outcome="released", attempt=self.attempt)
        event.container.schedule(0.2, self.Retry(self))

    def on_rejected(self, event):
        emit(outcome="rejected", attempt=self.attempt)
        self.finish(event)

    class Retry:
        def __init__(self, outer):
            self.outer = outer

        def on_timer_task(self, event):
            self.outer.send()

    def on_message(self, event):
        emit(response=describe(event.message))
        self.accept(event.delivery)
        self.responded = True
        if self.accepted:
            self.finish(event)

    def finish(self, event):
        emit(done=1 if self.responded else 0)
        self.timer.cancel()
        event.connection.close()

    def on_timer_task(self, event):
        emit(timeout=True, got=1 if self.responded else 0)
        event.container.stop()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    modes = {"consume": Consume, "consume-raw": ConsumeRaw, "hold": Hold, "command": Command}
    Container(modes[mode](*args)).run()
