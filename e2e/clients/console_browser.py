"""Drives Ferry's web console in a real headless Chromium (selenium + chromium-driver), for the
end-to-end story in e2e/tests/stories/console.rs.

Usage:
  console_browser.py REGISTRY_URL ADMIN_TOKEN MQTT_PORT SCREENSHOT_DIR

Signs in (a wrong token first, which must be refused), creates tenant console-t, device sensor-1 and its
password, connects a paho device and sees it online within 1 s, watches its telemetry in the live view,
sends it a command from the console and sees the response, sees a non-zero telemetry rate on the
tenant's charts while it sends, saves tenant limits (an invalid one first: the API's error is shown;
then max-connections 1 and max-stored-events 5, after which a second paho device of the tenant is
refused), sees it offline within 1 s after it disconnects, and sets a gateway in the device's `via`
(the device list then marks the gateway). Writes a screenshot of each page to SCREENSHOT_DIR. Prints
one JSON object a line; the last is {"passed": true} or {"failed": "..."}.

Points where the Rust story acts, each answered by a file in SCREENSHOT_DIR:
  {"need_consumer": true}  an application consumes telemetry/console-t, and the tenant and the device
                           got fields of their own (the saves below must keep them): consumer-ready
  {"check": "limits"}      the story read the tenant back through the API: checked-limits
  {"check": "via"}         the story read the device back through the API: checked-via
"""
import json
import os
import shutil
import sys
import threading
import time

import paho.mqtt.client as mqtt
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

TENANT, DEVICE, PASSWORD = "console-t", "sensor-1", "pw-sensor-1"
GATEWAY = "gw-1"


def emit(**kw):
    print(json.dumps(kw), flush=True)


class Failed(Exception):
    pass


def wait_until(what, check, timeout=10.0, step=0.02):
    """Polls check() until it is truthy; returns (value, seconds taken)."""
    start = time.monotonic()
    last_error = None
    while time.monotonic() - start < timeout:
        try:
            v = check()
            if v:
                return v, time.monotonic() - start
        except Exception as e:  # the page is being rebuilt: try again
            last_error = e
        time.sleep(step)
    raise Failed("%s: not within %.1f s (last error: %s)" % (what, timeout, last_error))


def await_check(shots, what):
    """Tells the Rust story to check `what` through the API and waits for its answer."""
    emit(check=what)
    wait_until("the story's check of %s" % what,
               lambda: os.path.exists(os.path.join(shots, "checked-" + what)), timeout=30, step=0.1)


def browser():
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not binary or not os.path.exists(driver_path):
        raise Failed("chromium and chromium-driver are needed; run scripts/test, which installs them")
    options.binary_location = binary
    return webdriver.Chrome(service=Service(driver_path), options=options)


def main(registry, token, mqtt_port, shots):
    os.makedirs(shots, exist_ok=True)
    d = browser()
    n = [0]

    def shot(name):
        n[0] += 1
        path = os.path.join(shots, "%02d-%s.png" % (n[0], name))
        d.save_screenshot(path)
        emit(screenshot=path)

    by_id = lambda i: d.find_element(By.ID, i)

    def text_of(i):
        return by_id(i).text

    def go(fragment):
        d.get(registry + "/console#" + fragment)

    def submit(form_fields, button):
        for i, v in form_fields.items():
            e = by_id(i)
            e.clear()
            e.send_keys(v)
        by_id(button).click()

    def no_error(what):
        err = by_id("error")
        if err.is_displayed() and err.text:
            raise Failed("%s: the console shows an error: %s" % (what, err.text))

    try:
        # Sign in: a wrong token is refused with the API's answer, and nothing is stored.
        d.get(registry + "/console")
        wait_until("the sign-in form", lambda: by_id("signin-token").is_displayed())
        shot("sign-in")
        submit({"signin-token": "not-the-token"}, "signin-submit")
        wait_until("the refusal of a wrong token",
                   lambda: by_id("error").is_displayed() and "401" in text_of("error"))
        if d.execute_script("return sessionStorage.getItem('ferry-admin-token')"):
            raise Failed("a refused token was kept in sessionStorage")
        if by_id("nav").is_displayed():
            raise Failed("the navigation is shown after a refused sign-in")
        shot("wrong-token-refused")
        emit(wrong_token_refused=text_of("error"))
        submit({"signin-token": token}, "signin-submit")
        wait_until("the tenants page", lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-tenant="demo"]'))
        if d.execute_script("return localStorage.length") != 0:
            raise Failed("the console wrote to localStorage")
        shot("tenants")

        # A tenant.
        submit({"new-tenant-id": TENANT}, "create-tenant")
        wait_until("the new tenant", lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-tenant="%s"]' % TENANT))
        no_error("create tenant")
        shot("tenant-created")

        # A device.
        go("devices/" + TENANT)
        wait_until("the devices page", lambda: by_id("new-device-id").is_displayed())
        submit({"new-device-id": DEVICE}, "create-device")
        row = 'tr[data-device="%s"]' % DEVICE
        wait_until("the new device", lambda: d.find_elements(By.CSS_SELECTOR, row))
        no_error("create device")
        presence = lambda: d.find_element(By.CSS_SELECTOR, row + " .presence").text
        if presence() != "offline":
            raise Failed("a device never connected shows %r" % presence())
        shot("device-created")

        # Its password; the page shows secret metadata and never a hash.
        go("device/%s/%s" % (TENANT, DEVICE))
        wait_until("the device page", lambda: by_id("cred-password").is_displayed())
        submit({"cred-auth-id": DEVICE, "cred-password": PASSWORD}, "add-password")
        wait_until("the password's metadata",
                   lambda: "id=" in d.find_element(By.CSS_SELECTOR, '#credentials tr[data-auth-id="%s"]' % DEVICE).text)
        no_error("add password")
        page = d.find_element(By.TAG_NAME, "body").text
        if "pwd-hash" in page or "$2" in page or PASSWORD in page:
            raise Failed("the device page shows a hash or the password")
        shot("credentials")

        # A paho device connects: online within a second.
        go("devices/" + TENANT)
        wait_until("the device row", lambda: presence() == "offline")
        connected = threading.Event()
        commands = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="console-test-%d" % os.getpid())
        c.username_pw_set("%s@%s" % (DEVICE, TENANT), PASSWORD)

        def on_connect(cl, userdata, flags, rc, props=None):
            if getattr(rc, "value", rc) == 0:
                connected.set()
                cl.subscribe("command///req/#", qos=1)

        def on_message(cl, userdata, msg):
            payload = msg.payload.decode("utf-8", "replace")
            commands.append((msg.topic, payload))
            parts = msg.topic.split("/")
            if len(parts) >= 6 and parts[4]:
                cl.publish("command///res/%s/200" % parts[4],
                           json.dumps({"done": True, "echo": payload}).encode(), qos=1)

        c.on_connect, c.on_message = on_connect, on_message
        c.connect("127.0.0.1", int(mqtt_port), keepalive=30)
        c.loop_start()
        if not connected.wait(10):
            raise Failed("the paho device could not connect")
        _, took = wait_until("the device online", lambda: presence() == "online", timeout=5)
        emit(online_after_s=round(took, 3))
        if took > 1.0:
            raise Failed("online only after %.2f s" % took)
        shot("device-online")

        # Live view: its telemetry appears.
        emit(need_consumer=True)
        wait_until("the test's consumer", lambda: os.path.exists(os.path.join(shots, "consumer-ready")), timeout=30)
        go("live/" + TENANT)
        wait_until("the live view", lambda: "Watching" in text_of("live-state"))
        info = c.publish("telemetry", json.dumps({"temp": 42.5}).encode(), qos=1)
        info.wait_for_publish(10)
        wait_until("the telemetry in the live view",
                   lambda: "42.5" in text_of("live-log") and DEVICE in text_of("live-log"))
        no_error("live view")
        shot("live-telemetry")

        # A command from the console reaches the device; its response is shown.
        go("device/%s/%s" % (TENANT, DEVICE))
        wait_until("the command form", lambda: by_id("cmd-name").is_displayed())
        submit({"cmd-name": "setLight", "cmd-payload": "on"}, "send-command")
        wait_until("the command's outcome", lambda: by_id("cmd-result").get_attribute("data-outcome"))
        result = text_of("cmd-result")
        if by_id("cmd-result").get_attribute("data-outcome") != "accepted" or '"status": 200' not in result \
                or "echo" not in result:
            raise Failed("the command's outcome is not the device's response: %s" % result)
        if not any(t.endswith("/setLight") and p == "on" for t, p in commands):
            raise Failed("the device did not get the command: %s" % commands)
        shot("command-response")

        # Charts: a non-zero telemetry rate while the device sends, and its connection.
        go("stats/" + TENANT)
        wait_until("the charts page", lambda: by_id("chart-telemetry").is_displayed())
        sending = threading.Event()
        sending.set()

        def send():
            i = 0
            while sending.is_set():
                i += 1
                c.publish("telemetry", json.dumps({"n": i}).encode(), qos=1)
                time.sleep(0.2)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            summary = by_id("chart-telemetry-summary")
            rate, took = wait_until("a non-zero telemetry rate on the chart",
                                    lambda: float(summary.get_attribute("data-forwarded") or 0), timeout=20, step=0.2)
            emit(chart_telemetry_rate=rate, chart_after_s=round(took, 3), summary=summary.text)
            connected_now = by_id("chart-connections-summary").get_attribute("data-now")
            if connected_now != "1":
                raise Failed("the connections chart shows %r connections, not 1" % connected_now)
            if by_id("chart-telemetry").get_attribute("role") != "img" \
                    or "forwarded" not in by_id("chart-telemetry").get_attribute("aria-label"):
                raise Failed("the telemetry chart has no accessible name with its figures")
            if not d.find_elements(By.CSS_SELECTOR, "#chart-telemetry polyline.forwarded"):
                raise Failed("the telemetry chart draws no line")
            no_error("charts")
            time.sleep(2.5)  # one more point on the lines for the screenshot
            shot("charts")
        finally:
            sending.clear()
            sender.join(5)

        # Tenant limits: the API's error for a bad value is shown; then max-connections 1 and
        # max-stored-events 5 are saved, with the rest of the tenant kept (the story checks), and a
        # second device of the tenant is refused while the first is connected (Hono's rule).
        go("tenant/" + TENANT)
        wait_until("the limits form", lambda: by_id("limit-max-connections").is_displayed())
        if by_id("limit-max-ttl").get_attribute("value") != "60":
            raise Failed("the limits form does not show the tenant's max-ttl 60: %r"
                         % by_id("limit-max-ttl").get_attribute("value"))
        submit({"limit-max-connections": "-5"}, "save-limits")
        wait_until("the API's refusal of max-connections -5",
                   lambda: by_id("error").is_displayed() and "400" in text_of("error")
                   and "max-connections" in text_of("error"))
        emit(limit_refused=text_of("error"))
        shot("limits-refused")
        submit({"limit-max-connections": "1", "limit-max-stored-events": "5"}, "save-limits")
        wait_until("the limits saved", lambda: "Limits saved" in text_of("status"))
        no_error("save limits")
        if by_id("limit-max-connections").get_attribute("value") != "1":
            raise Failed("the form does not show the saved max-connections")
        shot("limits-saved")
        await_check(shots, "limits")

        def second_device():
            result = {}
            done = threading.Event()
            c2 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="console-test-2-%d" % os.getpid())
            c2.username_pw_set("%s@%s" % (DEVICE, TENANT), PASSWORD)

            def on_connect2(cl, userdata, flags, rc, props=None):
                result["rc"] = getattr(rc, "value", rc)
                done.set()

            c2.on_connect = on_connect2
            c2.connect("127.0.0.1", int(mqtt_port), keepalive=30)
            c2.loop_start()
            done.wait(10)
            c2.disconnect()
            c2.loop_stop()
            return result.get("rc")

        # The adapters learn of the change from the registry's change stream: allow a moment.
        rc, _ = wait_until("a second device of the tenant refused",
                           lambda: (lambda code: code if code not in (None, 0) else None)(second_device()),
                           timeout=10, step=0.2)
        emit(second_device_refused_rc=rc)
        if rc not in (5, 0x87, 0x97):
            raise Failed("the second device was refused with %r, not Hono's 'not authorized'" % rc)

        # The device goes: offline within a second.
        go("devices/" + TENANT)
        wait_until("the device online again on its page", lambda: presence() == "online", timeout=5)
        start = time.monotonic()
        c.disconnect()
        c.loop_stop()
        wait_until("the device offline", lambda: presence() == "offline", timeout=5)
        took = time.monotonic() - start
        emit(offline_after_s=round(took, 3))
        if took > 1.0:
            raise Failed("offline only after %.2f s" % took)
        shot("device-offline")

        # A command to a device that is not connected: Hono's outcome, as the API gives it.
        go("device/%s/%s" % (TENANT, DEVICE))
        wait_until("the command form", lambda: by_id("cmd-name").is_displayed())
        submit({"cmd-name": "setLight", "cmd-payload": "off"}, "send-command")
        wait_until("the released outcome", lambda: by_id("cmd-result").get_attribute("data-outcome") == "released")
        shot("command-released")

        # Gateways: a device gw-1 becomes sensor-1's gateway; the API shows the via (the story
        # checks), the device list marks gw-1, the filter finds it, and gw-1's page says for whom.
        go("devices/" + TENANT)
        wait_until("the devices page", lambda: by_id("new-device-id").is_displayed())
        submit({"new-device-id": GATEWAY}, "create-device")
        gw_row = 'tr[data-device="%s"]' % GATEWAY
        wait_until("the gateway device", lambda: d.find_elements(By.CSS_SELECTOR, gw_row))
        if d.find_element(By.CSS_SELECTOR, gw_row).get_attribute("data-gateway") != "false":
            raise Failed("gw-1 is marked a gateway before any device names it")
        go("device/%s/%s" % (TENANT, DEVICE))
        # Loaded (the form is filled when this says something), so typing is not overwritten.
        wait_until("the gateways form", lambda: by_id("gw-via").is_displayed() and text_of("gw-acts-for"))
        submit({"gw-via": GATEWAY}, "save-gateways")
        wait_until("the gateways saved", lambda: "Gateways saved" in text_of("status"))
        no_error("save gateways")
        if by_id("gw-via").get_attribute("value") != GATEWAY:
            raise Failed("the form does not show the saved via: %r" % by_id("gw-via").get_attribute("value"))
        shot("device-gateways")
        await_check(shots, "via")
        go("devices/" + TENANT)
        wait_until("gw-1 marked a gateway",
                   lambda: d.find_element(By.CSS_SELECTOR, gw_row).get_attribute("data-gateway") == "true")
        sensor_row = d.find_element(By.CSS_SELECTOR, 'tr[data-device="%s"]' % DEVICE)
        if sensor_row.get_attribute("data-gateway") != "false" or "via " + GATEWAY not in sensor_row.text:
            raise Failed("the device row does not show its via: %r" % sensor_row.text)
        shot("devices-gateway-marked")
        by_id("gateways-only").click()
        by_id("search-devices").click()
        wait_until("only gateways listed",
                   lambda: [r.get_attribute("data-device") for r in d.find_elements(By.CSS_SELECTOR, "tr[data-device]")] == [GATEWAY])
        shot("gateways-list")
        go("device/%s/%s" % (TENANT, GATEWAY))
        wait_until("the gateway's page", lambda: DEVICE in text_of("gw-acts-for"))
        shot("gateway-page")

        go("applications")
        wait_until("the application users", lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-app="demo-app"]'))
        shot("applications")
        emit(passed=True)
    except Failed as e:
        try:
            shot("failure")
        except Exception:
            pass
        emit(failed=str(e))
        sys.exit(1)
    finally:
        d.quit()


if __name__ == "__main__":
    main(*sys.argv[1:5])
