# shellcheck shell=bash
# The live-cluster part of charts/test.sh (sourced by it when KUBECONFIG is set; not run on its own).
# Uses: $HELM $KUBECTL $PY $WORK $CHART, section/note/die, cleanup_actions.
#
# What a user does after `helm install`, end to end:
#   helm install (operator restricted to a fresh namespace) → AddressSpace Ready → kubectl apply a Tenant
#   with an application → device and password through the registry's management API → mosquitto_pub
#   telemetry through the MQTT adapter's Service → the Qpid Proton example consumer receives it (and the
#   rhea one, when node can load rhea) → Tenant deleted through its finalizer → helm uninstall.
# Then cluster mode (live_cluster_mode_test): a throwaway PostgreSQL, helm install -f values-ha.yaml
#   (managed NATS 3, routers 2, adapters 2, registry 2) → Ready with MessagingReady → routers are a
#   Deployment, disruption budgets exist → telemetry end to end → an event stored while no application
#   consumes, a NATS node and a router deleted, the event still delivered and telemetry still flowing.
#
# Parameters (environment):
#   FERRY_IMAGE_REGISTRY   image registry holding the ferry-* images (default ghcr.io/ferry-iot)
#   FERRY_IMAGE_TAG        their tag (default: the chart's appVersion)
#   FERRY_LIVE_NAMESPACE   namespace to create and delete (default ferry-live-<time>-<pid>)
#   FERRY_LIVE_TIMEOUT     seconds to wait for the AddressSpace to become Ready (default 300)
#   FERRY_LIVE_POSTGRES_IMAGE  PostgreSQL image of the cluster-mode test (default docker.io/library/postgres:17-alpine)
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

# endpoint KEY: the AddressSpace's status.endpoints.KEY, "host:port" (in $LIVE_NS).
endpoint() {
    local value
    value=$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o "jsonpath={.status.endpoints.$1}")
    [ -n "$value" ] || die "AddressSpace ferry has no status.endpoints.$1"
    echo "$value"
}

live_cleanup() { # NAMESPACE
    local ns=$1
    if [ "${FERRY_LIVE_KEEP:-}" = 1 ]; then
        note "FERRY_LIVE_KEEP=1: leaving namespace $ns and release ferry-live"
        return
    fi
    # The Tenant first, while the operator runs to process its finalizer.
    "$KUBECTL" -n "$ns" delete tenant live --ignore-not-found --wait --timeout=60s >/dev/null 2>&1 || true
    "$HELM" uninstall ferry-live --namespace "$ns" --wait --timeout 2m >/dev/null 2>&1 || true
    "$KUBECTL" delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}

# live_install NAMESPACE HELM_ARGS...: a fresh namespace, the current CRDs, the chart (its operator
# watching that namespace only), and the AddressSpace ferry Ready. Sets LIVE_NS.
live_install() {
    LIVE_NS=$1
    shift
    local image_registry=${FERRY_IMAGE_REGISTRY:-ghcr.io/ferry-iot}
    local image_tag=${FERRY_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")}
    local timeout=${FERRY_LIVE_TIMEOUT:-300}
    section "Live: install into namespace $LIVE_NS (images $image_registry/*:$image_tag) $*"
    "$KUBECTL" get namespace "$LIVE_NS" >/dev/null 2>&1 || "$KUBECTL" create namespace "$LIVE_NS" >/dev/null
    cleanup_actions+=("live_cleanup $LIVE_NS")
    # Current CRDs first: helm installs crds/ only when they are absent, never upgrades them.
    "$KUBECTL" apply --server-side --force-conflicts -f "$CHART/crds/" >/dev/null
    # watchNamespace keeps this operator away from other namespaces (and other Ferry installs).
    "$HELM" install ferry-live "$CHART" --namespace "$LIVE_NS" \
        --set image.registry="$image_registry" --set image.tag="$image_tag" \
        --set watchNamespace="$LIVE_NS" --set addressSpace.name=ferry "$@" \
        --wait --timeout "${timeout}s" >"$WORK/helm-install.out"
    # (Helm 4's --wait watches every object's status, the AddressSpace's Ready condition included.)
    note "release ferry-live installed"

    if ! "$KUBECTL" -n "$LIVE_NS" wait addressspace/ferry --for=condition=Ready --timeout="${timeout}s" >/dev/null; then
        "$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o yaml >&2 || true
        "$KUBECTL" -n "$LIVE_NS" get pods,events >&2 || true
        die "AddressSpace ferry did not become Ready within ${timeout}s"
    fi
    note "AddressSpace ferry Ready: $("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o jsonpath='{.status.endpoints}')"
}

# live_tenant: the Tenant "live" with the application live-app. Sets TENANT_ID, APP_PASSWORD, TOKEN.
live_tenant() {
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
    local app_secret token_secret
    TENANT_ID=$("$KUBECTL" -n "$LIVE_NS" get tenant live -o jsonpath='{.status.registryTenantId}')
    app_secret=$("$KUBECTL" -n "$LIVE_NS" get tenant live -o jsonpath='{.status.applicationsSecret}')
    if [ -z "$TENANT_ID" ] || [ -z "$app_secret" ]; then
        die "Tenant live's status lacks registryTenantId or applicationsSecret"
    fi
    APP_PASSWORD=$("$KUBECTL" -n "$LIVE_NS" get secret "$app_secret" -o go-template='{{index .data "live-app"}}' | base64 -d)
    token_secret=$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o jsonpath='{.status.adminTokenSecret}')
    TOKEN=$("$KUBECTL" -n "$LIVE_NS" get secret "$token_secret" -o go-template='{{.data.token}}' | base64 -d)
    if [ -z "$APP_PASSWORD" ] || [ -z "$TOKEN" ]; then
        die "no application password or admin token"
    fi
    note "tenant $TENANT_ID, application live-app (password from Secret $app_secret)"
}

# live_forward: the CA of the router's certificate, and local ports to the registry, the router's
# AMQPS and the MQTT adapter. Sets REGISTRY_API, CURL_TLS, AMQP_URL, MQTT_PORT. Called again after pods
# were replaced (a port-forward follows one pod).
live_forward() {
    local registry amqp mqtt
    registry=$(endpoint registry)
    # Applications get AMQPS only (spec.router.plainAmqp is off): verify the router's certificate
    # against the CA the operator generated (the certificate's names include localhost, where the port
    # is forwarded).
    [ -z "$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o 'jsonpath={.status.endpoints.amqp}')" ] || die "plain AMQP is offered to applications although spec.router.plainAmqp is off"
    amqp=$(endpoint amqps)
    "$KUBECTL" -n "$LIVE_NS" get secret ferry-tls -o go-template='{{index .data "ca.crt"}}' | base64 -d >"$WORK/ca.crt"
    [ -s "$WORK/ca.crt" ] || die "no CA certificate (key ca.crt) in Secret ferry-tls"
    mqtt=$(endpoint mqtt)
    # Endpoints are in-cluster "service.namespace.svc:port": forward each Service's port.
    port_forward_endpoint registry "$registry"
    # The registry serves https when its config has a certificate (the operator's internal TLS).
    if "$KUBECTL" -n "$LIVE_NS" get configmap ferry-registry-config -o 'jsonpath={.data.config\.yaml}' | grep -q '^tls:'; then
        REGISTRY_API="https://localhost:$PF_PORT/v1"
        CURL_TLS=(--cacert "$WORK/ca.crt")
    else
        REGISTRY_API="http://127.0.0.1:$PF_PORT/v1"
        CURL_TLS=()
    fi
    port_forward_endpoint amqp "$amqp"
    AMQP_URL="amqps://live-app:$APP_PASSWORD@localhost:$PF_PORT"
    port_forward_endpoint mqtt "$mqtt"
    MQTT_PORT=$PF_PORT
}

# live_device: dev-1 with a password, through the management API.
live_device() {
    curl -fsS "${CURL_TLS[@]}" -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" "$REGISTRY_API/devices/$TENANT_ID/dev-1" ||
        die "creating device dev-1 failed"
    curl -fsS "${CURL_TLS[@]}" -o /dev/null -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data '[{"type": "hashed-password", "auth-id": "dev-1", "secrets": [{"pwd-plain": "dev-1-secret"}]}]' \
        "$REGISTRY_API/credentials/$TENANT_ID/dev-1" || die "setting dev-1's password failed"
    note "device dev-1 with a password"
}

# live_publish KIND PAYLOAD: dev-1 publishes telemetry or an event (QoS 1) through the MQTT adapter.
live_publish() {
    mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -i live-dev-1 -u "dev-1@$TENANT_ID" -P dev-1-secret \
        -q 1 -t "$1" -m "$2" || die "mosquitto_pub $1 failed"
}

# live_consume KIND PAYLOAD [publish]: the Proton example consumer receives PAYLOAD on KIND/TENANT (after
# publishing it, with "publish", once the consumer is attached).
live_consume() {
    local kind=$1 payload=$2 out="$WORK/proton-$RANDOM"
    "$PROTON_PYTHON" "$CHART/examples/consumer.py" --count 1 --ca "$WORK/ca.crt" "$AMQP_URL" "$kind/$TENANT_ID" \
        >"$out.out" 2>"$out.err" &
    local consumer=$!
    cleanup_actions+=("kill $consumer 2>/dev/null")
    wait_for_line "$out.err" "attached $kind/$TENANT_ID" 30 ||
        { cat "$out.err" >&2; die "the Proton consumer did not attach to $kind/$TENANT_ID"; }
    [ "${3:-}" != publish ] || live_publish "$kind" "$payload"
    wait_for_line "$out.out" "$payload" 30 ||
        { cat "$out.out" "$out.err" >&2; die "the Proton consumer did not receive $payload on $kind/$TENANT_ID"; }
    wait "$consumer" || die "the Proton consumer failed"
    grep -qF "$kind/$TENANT_ID dev-1 " "$out.out" || die "unexpected message: $(cat "$out.out")"
    note "Qpid Proton received on $kind: $(cat "$out.out")"
}

live_tools() {
    command -v mosquitto_pub >/dev/null || die "the live test needs mosquitto_pub (apt-get install mosquitto-clients)"
    command -v curl >/dev/null || die "the live test needs curl"
    PROTON_PYTHON=$(live_python_with_proton) || die "the live test needs a Python that imports proton (python3-qpid-proton)"
}

live_cluster_test() {
    live_tools
    live_install "${FERRY_LIVE_NAMESPACE:-ferry-live-$(date +%s)-$$}"
    live_tenant
    section "Live: device through the management API, telemetry through MQTT, consumed over AMQPS"
    live_forward
    live_device
    live_consume telemetry '{"temp": 21.5}' publish

    # The rhea example too, when node can load rhea (e2e/clients installs it).
    if command -v node >/dev/null && NODE_PATH=e2e/clients/node_modules node -e 'require("rhea")' 2>/dev/null; then
        CA="$WORK/ca.crt" COUNT=1 NODE_PATH=e2e/clients/node_modules node "$CHART/examples/consumer.js" "$AMQP_URL" "telemetry/$TENANT_ID" \
            >"$WORK/rhea.out" 2>"$WORK/rhea.err" &
        local rhea=$!
        cleanup_actions+=("kill $rhea 2>/dev/null")
        wait_for_line "$WORK/rhea.err" "attached telemetry/$TENANT_ID" 30 ||
            { cat "$WORK/rhea.err" >&2; die "the rhea consumer did not attach"; }
        live_publish telemetry '{"temp": 22.5}'
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
    status=$(curl -s "${CURL_TLS[@]}" -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$REGISTRY_API/tenants/$TENANT_ID")
    [ "$status" = 404 ] || die "tenant $TENANT_ID still in the registry after the Tenant was deleted (HTTP $status)"
    note "tenant $TENANT_ID removed from the registry"
}

# live_ready_replicas KIND NAME WANT: waits until the workload has WANT ready replicas.
live_ready_replicas() {
    local deadline=$((SECONDS + ${FERRY_LIVE_TIMEOUT:-300})) ready
    while :; do
        ready=$("$KUBECTL" -n "$LIVE_NS" get "$1" "$2" -o 'jsonpath={.status.readyReplicas}' 2>/dev/null || true)
        [ "${ready:-0}" = "$3" ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || die "$1/$2 has ${ready:-0} ready replicas, not $3"
        sleep 2
    done
}

# Cluster mode with values-ha.yaml. Runs after live_cluster_test, in its own namespace.
live_cluster_mode_test() {
    live_tools
    local ns="${FERRY_LIVE_NAMESPACE:-ferry-live-$(date +%s)-$$}-ha"
    local pg_image=${FERRY_LIVE_POSTGRES_IMAGE:-docker.io/library/postgres:17-alpine}
    section "Live, cluster mode: a throwaway PostgreSQL in $ns"
    "$KUBECTL" create namespace "$ns" >/dev/null
    cleanup_actions+=("live_cleanup $ns")
    "$KUBECTL" -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  replicas: 1
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: $pg_image
          env:
            - {name: POSTGRES_USER, value: ferry}
            - {name: POSTGRES_PASSWORD, value: live-test-only}
            - {name: POSTGRES_DB, value: ferry}
          ports: [{containerPort: 5432}]
          readinessProbe:
            exec: {command: [pg_isready, -U, ferry]}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec:
  selector: {app: postgres}
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Secret
metadata:
  name: ferry-postgres
  labels: {ferry.dev/allow: "true"}
stringData:
  url: postgres://ferry:live-test-only@postgres.$ns.svc:5432/ferry
YAML
    "$KUBECTL" -n "$ns" rollout status deployment/postgres --timeout="${FERRY_LIVE_TIMEOUT:-300}s" >/dev/null ||
        die "PostgreSQL did not start"
    # (The HA operator pair needs nothing else; the NetworkPolicies admit the registry's egress.)
    live_install "$ns" -f "$CHART/values-ha.yaml"

    section "Live, cluster mode: the shape values-ha.yaml promises"
    [ "$("$KUBECTL" -n "$LIVE_NS" get addressspace ferry -o 'jsonpath={.status.conditions[?(@.type=="MessagingReady")].status}')" = True ] ||
        die "MessagingReady is not True"
    live_ready_replicas statefulset ferry-nats 3
    live_ready_replicas deployment ferry-router 2
    live_ready_replicas deployment ferry-mqtt-adapter 2
    live_ready_replicas deployment ferry-registry 2
    ! "$KUBECTL" -n "$LIVE_NS" get statefulset ferry-router >/dev/null 2>&1 || die "a router StatefulSet exists in nats mode"
    for pdb in ferry-nats ferry-router ferry-mqtt-adapter ferry-http-adapter ferry-registry; do
        "$KUBECTL" -n "$LIVE_NS" get pdb "$pdb" >/dev/null || die "no PodDisruptionBudget $pdb"
    done
    "$KUBECTL" -n "$LIVE_NS" get networkpolicy ferry-nats >/dev/null || die "no NetworkPolicy ferry-nats"
    note "NATS 3/3, routers 2 (Deployment), adapters 2, registry 2; budgets and the NATS policy exist"

    live_tenant
    section "Live, cluster mode: telemetry end to end"
    live_forward
    live_device
    live_consume telemetry '{"temp": 31.5}' publish

    section "Live, cluster mode: an event outlives a NATS node and a router"
    # Stored (JetStream, three replicas) while no application consumes; PUBACK means stored.
    live_publish event '{"door": "open"}'
    "$KUBECTL" -n "$LIVE_NS" delete pod ferry-nats-0 --wait=true >/dev/null
    "$KUBECTL" -n "$LIVE_NS" delete pod -l app.kubernetes.io/instance=ferry,app.kubernetes.io/component=router \
        --field-selector=status.phase=Running --wait=true >/dev/null
    live_ready_replicas statefulset ferry-nats 3
    live_ready_replicas deployment ferry-router 2
    "$KUBECTL" -n "$LIVE_NS" wait addressspace/ferry --for=condition=Ready --timeout="${FERRY_LIVE_TIMEOUT:-300}s" >/dev/null ||
        die "AddressSpace ferry not Ready again after the pods were replaced"
    live_forward
    live_consume event '{"door": "open"}'
    live_consume telemetry '{"temp": 32.5}' publish
    note "the stored event arrived after a NATS node and the routers were replaced; telemetry flows"
}
