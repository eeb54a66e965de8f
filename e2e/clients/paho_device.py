"""A device written with Eclipse paho-mqtt (Python, MQTT 3.1.1), for Ferry's end-to-end stories.

Usage:
  paho_device.py events HOST PORT USER PASSWORD COUNT
      publish COUNT events (QoS 1, body {"seq": i}) one after the other, each waiting for its PUBACK
  paho_device.py telemetry HOST PORT USER PASSWORD COUNT
      publish COUNT QoS 1 telemetry messages (body {"seq": i}) one after the other, each waiting for its PUBACK
  paho_device.py flood HOST PORT USER PASSWORD SIZE RATE STOP_FILE SECONDS
      publish QoS 0 telemetry of SIZE bytes, RATE messages a second (0: as fast as paho can), until
      STOP_FILE exists or SECONDS have passed
  paho_device.py commands HOST PORT USER PASSWORD FILTER TIMEOUT
      subscribe to FILTER (e.g. command///req/#), answer each request/response command on
      command///res/REQ-ID/200 with {"done": true, "echo": PAYLOAD}; stay until TIMEOUT or disconnected

Prints one JSON object a line: {"connected": RC}, {"acked": I}, {"subscribed": [CODES]},
{"command": {"topic": ..., "payload": ...}}, {"disconnected": RC}, {"done": N}, {"timeout": true},
{"flooding": SIZE}, {"flooded": N}.
Exits when the adapter drops the connection (no reconnect).
"""
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def emit(**kw):
    print(json.dumps(kw), flush=True)


def code(rc):
    return getattr(rc, "value", rc)


def client(user, password):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-%d" % os.getpid())
    c.username_pw_set(user, password)
    connected = threading.Event()

    def on_connect(cl, userdata, flags, rc, props=None):
        emit(connected=code(rc))
        if rc == 0:
            connected.set()
        else:
            os._exit(1)

    def on_disconnect(cl, userdata, flags, rc, props=None):
        emit(disconnected=code(rc))
        os._exit(0)

    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    return c, connected


def events(host, port, user, password, count, topic="event"):
    c, connected = client(user, password)
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        emit(timeout=True)
        os._exit(1)
    for i in range(int(count)):
        info = c.publish(topic, json.dumps({"seq": i}).encode(), qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            emit(timeout=True, not_acked=i)
            os._exit(1)
        emit(acked=i)
    emit(done=int(count))
    c.on_disconnect = None
    c.disconnect()
    c.loop_stop()


def telemetry(host, port, user, password, count):
    events(host, port, user, password, count, topic="telemetry")


def flood(host, port, user, password, size, rate, stop_file, seconds):
    c, connected = client(user, password)
    c.max_queued_messages_set(1000)
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        emit(timeout=True)
        os._exit(1)
    emit(flooding=int(size))
    body, sent, rate = b"x" * int(size), 0, int(rate)
    start = time.monotonic()
    deadline = start + float(seconds)
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        for _ in range(100):
            if c.publish("telemetry", body, qos=0).rc == mqtt.MQTT_ERR_SUCCESS:
                sent += 1
        # Paced: the next hundred when they are due.
        ahead = sent / rate - (time.monotonic() - start) if rate else 0
        time.sleep(max(ahead, 0.001))
    emit(flooded=sent)
    # Not disconnect(): paho would first write out what it still has queued.
    os._exit(0)


def commands(host, port, user, password, topic_filter, timeout):
    c, connected = client(user, password)

    def on_subscribe(cl, userdata, mid, codes, props=None):
        emit(subscribed=[code(x) for x in codes])

    def on_message(cl, userdata, msg):
        payload = msg.payload.decode("utf-8", "replace")
        emit(command={"topic": msg.topic, "payload": payload})
        # command///req/REQ-ID/NAME (request/response) or command///req//NAME (one-way)
        parts = msg.topic.split("/")
        if len(parts) >= 6 and parts[4]:
            body = json.dumps({"done": True, "echo": payload}).encode()
            cl.publish("command///res/%s/200" % parts[4], body, qos=1)

    c.on_subscribe, c.on_message = on_subscribe, on_message
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        emit(timeout=True)
        os._exit(1)
    c.subscribe(topic_filter, qos=1)
    threading.Event().wait(float(timeout))
    emit(timeout=True)
    os._exit(0)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"events": events, "telemetry": telemetry, "flood": flood, "commands": commands}[mode](*args)
