//! The committed CRDs (crds/ and charts/ferry/crds/) are what the Rust types generate, and the generated
//! schemas carry the validation the types declare. Regenerate with
//! `FERRY_BLESS=1 cargo nextest run -p ferry-operator crds`.

use std::path::PathBuf;

use ferry_operator::crd::{crd_file_name, crd_yaml, crds};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_are_current() {
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let mut stale = Vec::new();
    for crd in crds() {
        let fresh = crd_yaml(&crd).expect("CRD renders");
        for dir in ["crds", "charts/ferry/crds"] {
            let path = repo().join(dir).join(crd_file_name(&crd));
            if bless {
                std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
                std::fs::write(&path, &fresh).expect("write CRD");
            }
            if std::fs::read_to_string(&path).ok().as_deref() != Some(fresh.as_str()) {
                stale.push(format!("{dir}/{}", crd_file_name(&crd)));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale or missing CRDs {stale:?}: run FERRY_BLESS=1 cargo nextest run -p ferry-operator crds"
    );
}

#[test]
fn crd_command_prints_both_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-operator"))
        .arg("crd")
        .output()
        .expect("run ferry-operator crd");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d.trim_start_matches("---\n")).expect("YAML document"))
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["addressspaces.ferry.dev", "tenants.ferry.dev"]);
}

fn crd_json(index: usize) -> Value {
    serde_json::to_value(&crds()[index]).expect("CRD serializes")
}

fn schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// The rules of `x-kubernetes-validations` at `node`.
fn rules(node: &Value) -> Vec<&str> {
    node["x-kubernetes-validations"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["rule"].as_str()).collect())
        .unwrap_or_default()
}

/// Every path in the schema that has `key`.
fn paths_with(node: &Value, key: &str, path: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = node {
        if map.contains_key(key) {
            out.push(path.to_owned());
        }
        for (k, v) in map {
            paths_with(v, key, &format!("{path}/{k}"), out);
        }
    }
}

#[test]
fn address_space_schema_validates_what_the_contract_says() {
    let crd = crd_json(0);
    assert_eq!(crd["spec"]["group"], "ferry.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["fas"])
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(columns, ["Phase", "Ready", "AMQPS", "Age"]);

    let spec = &schema(&crd)["properties"]["spec"]["properties"];
    let registry = &spec["registry"];
    assert_eq!(registry["properties"]["replicas"]["minimum"], 1.0);
    assert_eq!(registry["properties"]["replicas"]["default"], 1);
    let database = &registry["properties"]["database"];
    assert_eq!(
        database["properties"]["type"]["enum"],
        serde_json::json!(["sqlite", "postgresql"])
    );
    assert_eq!(database["properties"]["type"]["default"], "sqlite");
    assert_eq!(
        database["properties"]["storage"]["properties"]["size"]["default"],
        "1Gi"
    );
    assert_eq!(
        database["properties"]["postgresql"]["required"],
        serde_json::json!(["secretName"])
    );
    assert_eq!(
        database["properties"]["postgresql"]["properties"]["key"]["default"],
        "url"
    );
    assert_eq!(
        rules(registry),
        ["self.database.type != 'sqlite' || self.replicas == 1"]
    );
    assert_eq!(
        rules(database),
        ["self.type != 'postgresql' || (has(self.postgresql) && self.postgresql.secretName != '')"]
    );
    assert_eq!(
        spec["router"]["properties"]["service"]["properties"]["type"]["enum"],
        serde_json::json!(["ClusterIP", "NodePort", "LoadBalancer"])
    );
    // Plain AMQP for applications is off unless asked for.
    assert_eq!(spec["router"]["properties"]["plainAmqp"]["type"], "boolean");
    assert_eq!(spec["router"]["properties"]["plainAmqp"]["default"], false);
    // Image references are built from these: no spaces, `@` or second `:` that could start another
    // reference (charts/test.sh checks values against the same patterns).
    let image = &spec["image"]["properties"];
    assert_eq!(
        image["registry"]["pattern"],
        "^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?(/[A-Za-z0-9._-]+)*$"
    );
    assert_eq!(
        image["tag"]["pattern"],
        "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
    );
    let mqtt = &spec["adapters"]["properties"]["mqtt"]["properties"];
    assert_eq!(mqtt["enabled"]["default"], true);
    assert_eq!(mqtt["replicas"]["minimum"], 0.0);
    assert_eq!(
        spec["image"]["properties"]["pullPolicy"]["enum"],
        serde_json::json!(["Always", "IfNotPresent", "Never"])
    );
    assert_eq!(spec["tls"]["required"], serde_json::json!(["secretName"]));
    let status = &schema(&crd)["properties"]["status"]["properties"];
    for field in [
        "phase",
        "conditions",
        "endpoints",
        "adminTokenSecret",
        "observedGeneration",
    ] {
        assert!(status.get(field).is_some(), "status.{field}");
    }
    // Structural: nothing is kept unvalidated.
    let mut free = Vec::new();
    paths_with(
        schema(&crd),
        "x-kubernetes-preserve-unknown-fields",
        "",
        &mut free,
    );
    assert!(free.is_empty(), "{free:?}");
}

#[test]
fn tenant_schema_validates_what_the_contract_says() {
    let crd = crd_json(1);
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["ften"])
    );
    let version = &crd["spec"]["versions"][0];
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(columns, ["Tenant", "AddressSpace", "Ready", "Age"]);
    let spec = &schema(&crd)["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["addressSpace"]));
    let props = &spec["properties"];
    assert_eq!(props["enabled"]["default"], true);
    assert!(props["tenantId"]["pattern"].is_string());
    assert_eq!(
        props["adapters"]["items"]["properties"]["type"]["enum"],
        serde_json::json!(["hono-mqtt", "hono-http"])
    );
    assert_eq!(props["adapters"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        props["applications"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["name"])
    );
    for limit in ["maxConnections", "maxTtl", "maxTtd"] {
        assert_eq!(
            props["resourceLimits"]["properties"][limit]["minimum"],
            -1.0
        );
    }
    assert_eq!(
        props["trustedCa"]["items"]["required"],
        serde_json::json!(["subjectDn"])
    );
    assert_eq!(
        rules(&props["trustedCa"]["items"]),
        ["has(self.cert) || has(self.publicKey)"]
    );
    let spec_rules = rules(spec);
    assert!(
        spec_rules.contains(&"self.addressSpace == oldSelf.addressSpace"),
        "{spec_rules:?}"
    );
    assert_eq!(spec_rules.len(), 2);
    // Only `defaults` is free-form.
    let mut free = Vec::new();
    paths_with(
        schema(&crd),
        "x-kubernetes-preserve-unknown-fields",
        "",
        &mut free,
    );
    assert_eq!(free, ["/properties/spec/properties/defaults"]);
}
