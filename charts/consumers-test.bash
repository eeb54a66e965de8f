# shellcheck shell=bash
# Part of charts/test.sh (sourced; not run on its own): the example consumers that docs/kubernetes.md
# shows (charts/ferry/examples/consumer.py and consumer.js) against a real `ferry up` on this machine,
# fed by mosquitto_pub. Proves the documented programs receive telemetry and events, and fail loudly on
# a wrong password and on another tenant's address.
# Uses: $PY $WORK $CHART, section/note/die, cleanup_actions.

consumers_python() {
    local candidate
    for candidate in "${FERRY_TEST_PYTHON:-}" /usr/bin/python3 "$(command -v python3 || true)"; do
        [ -n "$candidate" ] || continue
        [ -x "$candidate" ] || continue
        if "$candidate" -c 'import proton' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# wait_for_text FILE TEXT SECONDS
wait_for_text() {
    local deadline=$((SECONDS + $3))
    until grep -qF -- "$2" "$1" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

consumers_test() {
    local python
    if ! python=$(consumers_python); then
        # scripts/test always provides one (FERRY_TEST_PYTHON); only a bare standalone run lacks it.
        [ -z "${FERRY_TEST_PYTHON:-}" ] || die "FERRY_TEST_PYTHON=$FERRY_TEST_PYTHON cannot import proton"
        note "skipped: no Python imports proton (apt-get install python3-qpid-proton)"
        return 0
    fi
    command -v mosquitto_pub >/dev/null || die "mosquitto_pub not found (apt-get install mosquitto-clients)"

    local target_dir ferry
    target_dir=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["target_directory"])' "$WORK/cargo-metadata.json")
    cargo build --quiet --locked -p ferry --bin ferry
    ferry="$target_dir/debug/ferry"

    local registry_port amqp_port mqtt_port http_port
    read -r registry_port amqp_port mqtt_port http_port <<<"$("$PY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
    "$ferry" up --data-dir "$WORK/ferry-up" --registry-port "$registry_port" --amqp-port "$amqp_port" \
        --mqtt-port "$mqtt_port" --http-port "$http_port" --mqtt-bind 127.0.0.1 >"$WORK/ferry-up.log" 2>&1 &
    local up=$!
    cleanup_actions+=("kill $up 2>/dev/null; wait $up 2>/dev/null")
    local api="http://127.0.0.1:$registry_port/v1" token="" deadline=$((SECONDS + 30))
    until [ -s "$WORK/ferry-up/admin-token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$registry_port/live" 2>/dev/null; do
        kill -0 "$up" 2>/dev/null || { cat "$WORK/ferry-up.log" >&2; die "ferry up exited"; }
        [ "$SECONDS" -lt "$deadline" ] || { cat "$WORK/ferry-up.log" >&2; die "ferry up did not start within 30s"; }
        sleep 0.2
    done
    token=$(cat "$WORK/ferry-up/admin-token")
    call() { curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }
    call -X POST "$api/tenants/acme"
    call -X POST "$api/tenants/globex"
    call -X POST "$api/devices/acme/sensor-1"
    call -X PUT --data '[{"type": "hashed-password", "auth-id": "sensor-1", "secrets": [{"pwd-plain": "s3cret"}]}]' \
        "$api/credentials/acme/sensor-1"
    call -X PUT --data '{"password": "app-secret", "tenants": ["acme"]}' "$api/applications/acme-app"
    note "ferry up on 127.0.0.1 (AMQP $amqp_port, MQTT $mqtt_port): tenant acme, device sensor-1, application acme-app"

    local url="amqp://acme-app:app-secret@127.0.0.1:$amqp_port"
    publish() { mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u sensor-1@acme -P s3cret -q 1 -t "$1" -m "$2"; }

    # Qpid Proton: telemetry.
    "$python" "$CHART/examples/consumer.py" --count 1 "$url" telemetry/acme event/acme \
        >"$WORK/consumer-py.out" 2>"$WORK/consumer-py.err" &
    local consumer=$!
    cleanup_actions+=("kill $consumer 2>/dev/null")
    wait_for_text "$WORK/consumer-py.err" "attached event/acme" 20 ||
        { cat "$WORK/consumer-py.err" >&2; die "consumer.py did not attach"; }
    publish telemetry '{"temp": 21.5}' || die "mosquitto_pub (telemetry) failed"
    wait "$consumer" || { cat "$WORK/consumer-py.err" >&2; die "consumer.py failed"; }
    grep -qxF 'telemetry/acme sensor-1 application/octet-stream {"temp": 21.5}' "$WORK/consumer-py.out" ||
        die "consumer.py printed: $(cat "$WORK/consumer-py.out")"
    note "consumer.py (Qpid Proton) received: $(cat "$WORK/consumer-py.out")"

    # rhea: an event (stored by the router until a consumer takes it, so it is sent first).
    if command -v node >/dev/null && NODE_PATH=e2e/clients/node_modules node -e 'require("rhea")' 2>/dev/null; then
        publish event '{"door": "open"}' || die "mosquitto_pub (event) failed"
        COUNT=1 NODE_PATH=e2e/clients/node_modules timeout 20 node "$CHART/examples/consumer.js" "$url" event/acme \
            >"$WORK/consumer-js.out" 2>"$WORK/consumer-js.err" ||
            { cat "$WORK/consumer-js.err" >&2; die "consumer.js failed"; }
        grep -qxF 'event/acme sensor-1 application/octet-stream {"door": "open"}' "$WORK/consumer-js.out" ||
            die "consumer.js printed: $(cat "$WORK/consumer-js.out")"
        note "consumer.js (rhea) received: $(cat "$WORK/consumer-js.out")"
    else
        note "rhea not loadable (npm install in e2e/clients): consumer.js not run"
    fi

    # Refusals are reported, with a non-zero exit.
    if timeout 20 "$python" "$CHART/examples/consumer.py" "amqp://acme-app:wrong@127.0.0.1:$amqp_port" telemetry/acme \
        >/dev/null 2>"$WORK/consumer-bad.err"; then
        die "consumer.py succeeded with a wrong password"
    fi
    grep -q "connection failed: .*unauthorized-access" "$WORK/consumer-bad.err" ||
        die "consumer.py with a wrong password said: $(cat "$WORK/consumer-bad.err")"
    if timeout 20 "$python" "$CHART/examples/consumer.py" "$url" telemetry/globex >/dev/null 2>"$WORK/consumer-other.err"; then
        die "consumer.py could attach to another tenant's address"
    fi
    grep -q "link refused: .*unauthorized-access" "$WORK/consumer-other.err" ||
        die "consumer.py on another tenant's address said: $(cat "$WORK/consumer-other.err")"
    note "a wrong password and another tenant's address are refused (exit 1, reason on stderr)"
}
