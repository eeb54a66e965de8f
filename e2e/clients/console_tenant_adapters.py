#!/usr/bin/env python3
"""A tenant's protocol adapters set in the console, in headless Chromium.

Usage: console_tenant_adapters.py REGISTRY_URL ADMIN_TOKEN TENANT SCREENSHOT_DIR

Signs in, opens TENANT's page, where both adapters show enabled (the tenant has no adapter list), turns
the HTTP adapter off, saves, and reads the page again. Prints {"passed": true} at the end, or
{"failed": reason}; the story then checks the tenant through the API and with real devices.
"""
import os
import sys

from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console_browser import Failed, browser, emit, wait_until  # noqa: E402


def main(registry, token, tenant, shots):
    os.makedirs(shots, exist_ok=True)
    d = browser()
    by_id = lambda i: d.find_element(By.ID, i)
    checked = lambda i: by_id(i).is_selected()
    try:
        d.get(registry + "/console")
        wait_until("the sign-in form", lambda: by_id("signin-token").is_displayed())
        by_id("signin-token").send_keys(token)
        by_id("signin-submit").click()
        wait_until("signed in", lambda: by_id("nav").is_displayed())
        d.get(registry + "/console#tenant/" + tenant)
        wait_until("the adapters form", lambda: by_id("adapter-hono-http-enabled"))
        for i in ("adapter-hono-mqtt-enabled", "adapter-hono-http-enabled",
                  "adapter-hono-mqtt-auth", "adapter-hono-http-auth"):
            if not checked(i):
                raise Failed(i + " is not checked for a tenant without an adapter list")
        by_id("adapter-hono-http-enabled").click()
        by_id("save-adapters").click()
        wait_until("the save", lambda: "Adapters saved" in by_id("status").text)
        d.get(registry + "/console#devices/" + tenant)
        d.get(registry + "/console#tenant/" + tenant)
        wait_until("the page read again", lambda: by_id("adapter-hono-http-enabled"))
        if checked("adapter-hono-http-enabled") or not checked("adapter-hono-mqtt-enabled"):
            raise Failed("the saved adapters do not show: HTTP off, MQTT on")
        err = by_id("error")
        if err.is_displayed() and err.text:
            raise Failed("the console shows an error: " + err.text)
        d.save_screenshot(os.path.join(shots, "tenant-adapters.png"))
    except Failed as e:
        d.save_screenshot(os.path.join(shots, "tenant-adapters-failed.png"))
        d.quit()
        emit(failed=str(e))
        sys.exit(1)
    # The browser goes before the verdict: the story may stop this script as soon as it reads it.
    d.quit()
    emit(passed=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
