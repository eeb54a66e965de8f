#!/usr/bin/env python3
"""The console signed in with a tenant token, in headless Chromium.

Usage: console_tenant_token.py REGISTRY_URL TENANT_TOKEN TENANT OTHER_TENANT DEVICE SCREENSHOT_DIR

Signs in with a token of TENANT (made with `ferry token create`): the console opens TENANT's devices
(DEVICE listed) and hides the admin's pages; asking for the tenant list or OTHER_TENANT's devices brings
it back to its own devices. Prints {"passed": true} at the end, or {"failed": reason}.
"""
import json
import os
import sys

from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console_browser import Failed, browser, emit, wait_until  # noqa: E402


def main(registry, token, tenant, other, device, shots):
    os.makedirs(shots, exist_ok=True)
    d = browser()
    by_id = lambda i: d.find_element(By.ID, i)
    own_rows = lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-device="%s"]' % device)

    def own_devices_page(what):
        wait_until(what, lambda: own_rows() and tenant in by_id("view-title").text)

    try:
        d.get(registry + "/console")
        wait_until("the sign-in form", lambda: by_id("signin-token").is_displayed())
        by_id("signin-token").send_keys(token)
        by_id("signin-submit").click()
        own_devices_page("its own tenant's devices after sign-in")
        if by_id("nav-admin").is_displayed() or by_id("nav-admin-apps").is_displayed():
            raise Failed("the admin's pages are offered to a tenant token")
        if not by_id("nav-own").is_displayed():
            raise Failed("no link to the tenant's own devices")
        if d.execute_script("return sessionStorage.getItem('ferry-console-tenant')") != tenant:
            raise Failed("the console did not learn the token's tenant")
        d.save_screenshot(os.path.join(shots, "tenant-token-devices.png"))
        for fragment in ("tenants", "applications", "devices/" + other, "tenant/" + tenant):
            d.get(registry + "/console#" + fragment)
            own_devices_page("back to its own devices from #" + fragment)
            if d.find_elements(By.CSS_SELECTOR, 'tr[data-tenant="%s"]' % other):
                raise Failed("another tenant is shown from #" + fragment)
        err = by_id("error")
        if err.is_displayed() and err.text:
            raise Failed("the console shows an error: " + err.text)
    except Failed as e:
        d.save_screenshot(os.path.join(shots, "tenant-token-failed.png"))
        d.quit()
        emit(failed=str(e))
        sys.exit(1)
    # The browser goes before the verdict: the story may stop this script as soon as it reads it.
    d.quit()
    emit(passed=True)


if __name__ == "__main__":
    main(*sys.argv[1:7])
