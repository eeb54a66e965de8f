# shellcheck shell=bash
# The live-cluster part of charts/test.sh (sourced by it when KUBECONFIG is set; not run on its own).
# Uses: $HELM $KUBECTL $PY $WORK $CHART, section/note/die, cleanup_actions.
#
# What a user does after `helm install`, end to end:
#   helm install (operator restricted to a fresh namespace) → AddressSpace Ready → kubectl apply a Tenant
#   with an application → device and password through the registry's management API → mosquitto_pub
#   telemetry through the MQTT adapter's Service → the Qpid Proton example consumer receives it (and the
#   rhea one, when node can load rhea) → Tenant deleted through its finalizer → helm uninstall.
#
# Parameters (environment):
#   FERRY_IMAGE_REGISTRY   image registry holding the ferry-* images (default ghcr.io/ferry-iot)
#   FERRY_IMAGE_TAG        their tag (default: the chart's appVersion)
#   FERRY_LIVE_NAMESPACE   namespace to create and delete (default ferry-live-<time>-<pid>)
#   FERRY_LIVE_TIMEOUT     seconds to wait for the AddressSpace to become Ready (default 300)
#   FERRY_LIVE_KEEP=1      leave the namespace and release behind for a post-mortem

live_python_with_proton() {
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

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_line FILE TEXT SECONDS: until FILE holds TEXT.
wait_for_line() {
    local deadline=$((SECONDS + $3))
    until grep -qF -- "$2" "$1" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

# port_forward NAME SERVICE PORT: forwards a free local port to SERVICE:PORT and sets PF_PORT to it.
# (Not in a $(...) subshell: the cleanup list must learn the kubectl process.)
port_forward() {
    local name=$1 service=$2 port=$3
    PF_PORT=$(free_port)
    "$KUBECTL" -n "$LIVE_NS" port-forward "svc/$service" "$PF_PORT:$port" >"$WORK/pf-$name.log" 2>&1 &
    cleanup_actions+=("kill $! 2>/dev/null")
    wait_for_line "$WORK/pf-$name.log" "Forwarding from" 30 ||
        { cat "$WORK/pf-$name.log" >&2; die "kubectl port-forward svc/$service $port did not start"; }
}

# port_forward_endpoint NAME HOST:PORT: the Service is the first label of HOST.
port_forward_endpoint() {
    local host=${2%:*}
    port_forward "$1" "${host%%.*}" "${2##*:}"
}

# endpoint KEY: the AddressSpace's status.endpoints.KEY, "host:port".
endpoint() {
    local value
    value=$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o "jsonpath={.status.endpoints.$1}")
    [ -n "$value" ] || die "AddressSpace ferry has no status.endpoints.$1"
    echo "$value"
}

live_cleanup() {
    if [ "${FERRY_LIVE_KEEP:-}" = 1 ]; then
        note "FERRY_LIVE_KEEP=1: leaving namespace $LIVE_NS and release ferry-live"
        return
    fi
    # The Tenant first, while the operator runs to process its finalizer.
    "$KUBECTL" -n "$LIVE_NS" delete tenant live --ignore-not-found --wait --timeout=60s >/dev/null 2>&1 || true
    "$HELM" uninstall ferry-live --namespace "$LIVE_NS" --wait --timeout 2m >/dev/null 2>&1 || true
    "$KUBECTL" delete namespace "$LIVE_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}

live_cluster_test() {
    local image_registry=${FERRY_IMAGE_REGISTRY:-ghcr.io/ferry-iot}
    local image_tag=${FERRY_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")}
    local timeout=${FERRY_LIVE_TIMEOUT:-300}
    LIVE_NS=${FERRY_LIVE_NAMESPACE:-ferry-live-$(date +%s)-$$}
    local proton_python
    command -v mosquitto_pub >/dev/null || die "the live test needs mosquitto_pub (apt-get install mosquitto-clients)"
    command -v curl >/dev/null || die "the live test needs curl"
    proton_python=$(live_python_with_proton) || die "the live test needs a Python that imports proton (python3-qpid-proton)"

    section "Live: install into namespace $LIVE_NS (images $image_registry/*:$image_tag)"
    "$KUBECTL" create namespace "$LIVE_NS" >/dev/null
    cleanup_actions+=("live_cleanup")
    # Current CRDs first: helm installs crds/ only when they are absent, never upgrades them.
    "$KUBECTL" apply --server-side --force-conflicts -f "$CHART/crds/" >/dev/null
    # watchNamespace keeps this operator away from other namespaces (and other Ferry installs).
    "$HELM" install ferry-live "$CHART" --namespace "$LIVE_NS" \
        --set image.registry="$image_registry" --set image.tag="$image_tag" \
        --set watchNamespace="$LIVE_NS" --set addressSpace.name=ferry \
        --wait --timeout "${timeout}s" >"$WORK/helm-install.out"
    # (Helm 4's --wait watches every object's status, the AddressSpace's Ready condition included.)
    note "release ferry-live installed"

    if ! "$KUBECTL" -n "$LIVE_NS" wait addressspace/ferry --for=condition=Ready --timeout="${timeout}s" >/dev/null; then
        "$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o yaml >&2 || true
        "$KUBECTL" -n "$LIVE_NS" get pods,events >&2 || true
        die "AddressSpace ferry did not become Ready within ${timeout}s"
    fi
    note "AddressSpace ferry Ready: $("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o jsonpath='{.status.endpoints}')"

    section "Live: Tenant with an application"
    "$KUBECTL" -n "$LIVE_NS" apply -f - >/dev/null <<'YAML'
apiVersion: ferry.dev/v1alpha1
kind: Tenant
metadata:
  name: live
spec:
  addressSpace: ferry
  adapters:
    - type: hono-mqtt
  applications:
    - name: live-app
YAML
    if ! "$KUBECTL" -n "$LIVE_NS" wait tenant/live --for=condition=Ready --timeout=120s >/dev/null; then
        "$KUBECTL" -n "$LIVE_NS" get tenant live -o yaml >&2 || true
        die "Tenant live did not become Ready"
    fi
    local tenant_id app_secret app_password token_secret token
    tenant_id=$("$KUBECTL" -n "$LIVE_NS" get tenant live -o jsonpath='{.status.registryTenantId}')
    app_secret=$("$KUBECTL" -n "$LIVE_NS" get tenant live -o jsonpath='{.status.applicationsSecret}')
    if [ -z "$tenant_id" ] || [ -z "$app_secret" ]; then
        die "Tenant live's status lacks registryTenantId or applicationsSecret"
    fi
    app_password=$("$KUBECTL" -n "$LIVE_NS" get secret "$app_secret" -o go-template='{{index .data "live-app"}}' | base64 -d)
    token_secret=$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o jsonpath='{.status.adminTokenSecret}')
    token=$("$KUBECTL" -n "$LIVE_NS" get secret "$token_secret" -o go-template='{{.data.token}}' | base64 -d)
    if [ -z "$app_password" ] || [ -z "$token" ]; then
        die "no application password or admin token"
    fi
    note "tenant $tenant_id, application live-app (password from Secret $app_secret)"

    section "Live: device through the management API, telemetry through MQTT, consumed over AMQPS"
    local registry amqp mqtt registry_port amqp_port mqtt_port
    registry=$(endpoint registry)
    # Applications get AMQPS only (spec.router.plainAmqp is off): verify the router's certificate
    # against the one the operator generated (its names include localhost, where the port is forwarded).
    [ -z "$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o 'jsonpath={.status.endpoints.amqp}')" ] || die "plain AMQP is offered to applications although spec.router.plainAmqp is off"
    amqp=$(endpoint amqps)
    "$KUBECTL" -n "$LIVE_NS" get secret ferry-tls -o go-template='{{index .data "tls.crt"}}' | base64 -d >"$WORK/ca.crt"
    [ -s "$WORK/ca.crt" ] || die "no certificate in Secret ferry-tls"
    mqtt=$(endpoint mqtt)
    # Endpoints are in-cluster "service.namespace.svc:port": forward each Service's port.
    port_forward_endpoint registry "$registry"
    registry_port=$PF_PORT
    port_forward_endpoint amqp "$amqp"
    amqp_port=$PF_PORT
    port_forward_endpoint mqtt "$mqtt"
    mqtt_port=$PF_PORT

    local api="http://127.0.0.1:$registry_port/v1"
    curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $token" "$api/devices/$tenant_id/dev-1" ||
        die "creating device dev-1 failed"
    curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data '[{"type": "hashed-password", "auth-id": "dev-1", "secrets": [{"pwd-plain": "dev-1-secret"}]}]' \
        "$api/credentials/$tenant_id/dev-1" || die "setting dev-1's password failed"
    note "device dev-1 with a password"

    local url="amqps://live-app:$app_password@localhost:$amqp_port"
    "$proton_python" "$CHART/examples/consumer.py" --count 1 --ca "$WORK/ca.crt" "$url" "telemetry/$tenant_id" \
        >"$WORK/proton.out" 2>"$WORK/proton.err" &
    local consumer=$!
    cleanup_actions+=("kill $consumer 2>/dev/null")
    wait_for_line "$WORK/proton.err" "attached telemetry/$tenant_id" 30 ||
        { cat "$WORK/proton.err" >&2; die "the Proton consumer did not attach to telemetry/$tenant_id"; }
    mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -i live-dev-1 -u "dev-1@$tenant_id" -P dev-1-secret \
        -q 1 -t telemetry -m '{"temp": 21.5}' || die "mosquitto_pub failed"
    wait_for_line "$WORK/proton.out" '{"temp": 21.5}' 30 ||
        { cat "$WORK/proton.out" "$WORK/proton.err" >&2; die "the Proton consumer did not receive the telemetry"; }
    wait "$consumer" || die "the Proton consumer failed"
    grep -qF "telemetry/$tenant_id dev-1 " "$WORK/proton.out" || die "unexpected message: $(cat "$WORK/proton.out")"
    note "Qpid Proton received: $(cat "$WORK/proton.out")"

    # The rhea example too, when node can load rhea (e2e/clients installs it).
    if command -v node >/dev/null && NODE_PATH=e2e/clients/node_modules node -e 'require("rhea")' 2>/dev/null; then
        CA="$WORK/ca.crt" COUNT=1 NODE_PATH=e2e/clients/node_modules node "$CHART/examples/consumer.js" "$url" "telemetry/$tenant_id" \
            >"$WORK/rhea.out" 2>"$WORK/rhea.err" &
        local rhea=$!
        cleanup_actions+=("kill $rhea 2>/dev/null")
        wait_for_line "$WORK/rhea.err" "attached telemetry/$tenant_id" 30 ||
            { cat "$WORK/rhea.err" >&2; die "the rhea consumer did not attach"; }
        mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -i live-dev-1 -u "dev-1@$tenant_id" -P dev-1-secret \
            -q 1 -t telemetry -m '{"temp": 22.5}' || die "mosquitto_pub failed"
        wait_for_line "$WORK/rhea.out" '{"temp": 22.5}' 30 ||
            { cat "$WORK/rhea.out" "$WORK/rhea.err" >&2; die "the rhea consumer did not receive the telemetry"; }
        note "rhea received: $(cat "$WORK/rhea.out")"
    else
        note "rhea not loadable by node (npm install in e2e/clients): rhea consumer not run"
    fi

    section "Live: delete the Tenant (finalizer) and uninstall"
    "$KUBECTL" -n "$LIVE_NS" delete tenant live --wait --timeout=60s >/dev/null ||
        die "Tenant live was not deleted within 60s (finalizer)"
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$api/tenants/$tenant_id")
    [ "$status" = 404 ] || die "tenant $tenant_id still in the registry after the Tenant was deleted (HTTP $status)"
    note "tenant $tenant_id removed from the registry"
}
