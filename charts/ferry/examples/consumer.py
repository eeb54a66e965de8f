#!/usr/bin/env python3
"""Prints the telemetry and events of a Ferry tenant: a minimal Qpid Proton (python3-qpid-proton) application.

    consumer.py [--count N] [--ca CA.crt] amqps://USER:PASSWORD@HOST:PORT ADDRESS...
    consumer.py [--count N] amqp://USER:PASSWORD@HOST:PORT ADDRESS...

amqps:// is AMQP over TLS (the router's port 5671, the one applications reach in Kubernetes); --ca names
the PEM file of the CA (or self-signed certificate) to verify the router against, host name included
(the operator's generated certificate names the router's Services and "localhost"; its CA is the key
ca.crt of the Secret <name>-tls).

ADDRESS is telemetry/TENANT or event/TENANT. USER and PASSWORD are an application user of the tenant
(the Tenant's spec.applications; the password is in the Secret named by the Tenant's
status.applicationsSecret). Prints "attached ADDRESS" on stderr once a link is open, then one line per
message: address, device id, content type and payload. Stops after N messages (default: never).
"""
import argparse
import sys

from proton import SSLDomain
from proton.handlers import MessagingHandler
from proton.reactor import Container


class Consumer(MessagingHandler):
    def __init__(self, url, addresses, count, ca=None):
        super().__init__()  # accepts each message once on_message returns
        self.url, self.addresses, self.count, self.received = url, addresses, count, 0
        self.ca = ca
        self.failed = False

    def on_start(self, event):
        ssl_domain = None
        if self.ca:
            ssl_domain = SSLDomain(SSLDomain.MODE_CLIENT)
            ssl_domain.set_trusted_ca_db(self.ca)
            ssl_domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
        connection = event.container.connect(
            self.url,
            ssl_domain=ssl_domain,
            allowed_mechs="PLAIN",
            allow_insecure_mechs=True,
            reconnect=False,
        )
        for address in self.addresses:
            event.container.create_receiver(connection, address)

    def on_link_opened(self, event):
        print(f"attached {event.receiver.source.address}", file=sys.stderr, flush=True)

    def on_link_error(self, event):  # e.g. amqp:unauthorized-access for another tenant's address
        print(f"link refused: {event.link.remote_condition}", file=sys.stderr, flush=True)
        self.failed = True
        event.connection.close()

    def on_transport_error(self, event):  # unreachable, or SASL authentication failed
        print(f"connection failed: {event.transport.condition}", file=sys.stderr, flush=True)
        self.failed = True

    def on_message(self, event):
        message = event.message
        body = message.body
        if isinstance(body, (bytes, memoryview)):
            body = bytes(body).decode("utf-8", "replace")
        device = (message.properties or {}).get("device_id")
        print(f"{event.receiver.source.address} {device} {message.content_type} {body}", flush=True)
        self.received += 1
        if self.count and self.received >= self.count:
            event.connection.close()


def main():
    parser = argparse.ArgumentParser(description="Print a Ferry tenant's telemetry and events.")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages")
    parser.add_argument("--ca", help="PEM file of the CA that signed the router's certificate (amqps://)")
    parser.add_argument("url", help="amqps://USER:PASSWORD@HOST:PORT or amqp://...")
    parser.add_argument("addresses", nargs="+", help="telemetry/TENANT, event/TENANT")
    args = parser.parse_args()
    if args.ca and not args.url.startswith("amqps://"):
        parser.error("--ca needs an amqps:// URL")
    consumer = Consumer(args.url, args.addresses, args.count, args.ca)
    Container(consumer).run()
    sys.exit(1 if consumer.failed else 0)


if __name__ == "__main__":
    main()
