use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Demo {
    port: u16,
    token: String,
    verbose: bool,
    url: Option<String>,
    tls: Tls,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
struct Tls {
    cert_path: Option<PathBuf>,
    max_age: u32,
}

impl Default for Demo {
    fn default() -> Self {
        Self {
            port: 8080,
            token: "default".into(),
            verbose: false,
            url: None,
            tls: Tls::default(),
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sources(file: Option<PathBuf>, pairs: &[(&str, &str)]) -> Sources {
    Sources {
        file,
        env_prefix: "FERRY_DEMO_".into(),
        env: env(pairs),
        flags: Map::new(),
    }
}

#[test]
fn defaults_alone() {
    let c: Demo = load(&sources(None, &[])).expect("defaults load");
    assert_eq!(c, Demo::default());
}

#[test]
fn layers_override_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "port: 9000\ntoken: from-file\ntls:\n  max_age: 5\n").expect("write");
    let s = sources(
        Some(file),
        &[
            ("FERRY_DEMO_TOKEN", "12345"),
            ("FERRY_DEMO_TLS__CERT_PATH", "/x.pem"),
            ("OTHER", "1"),
        ],
    )
    .flag("port", Some(7000u16))
    .flag::<bool>("verbose", None);
    let c: Demo = load(&s).expect("layers load");
    assert_eq!(c.port, 7000, "flag beats file");
    assert_eq!(c.token, "12345", "env beats file, and digits stay a string");
    assert_eq!(c.tls.max_age, 5, "file beats default, nested");
    assert_eq!(c.tls.cert_path, Some(PathBuf::from("/x.pem")));
    assert!(!c.verbose);
}

#[test]
fn env_numbers_and_bools_are_typed() {
    let c: Demo = load(&sources(
        None,
        &[("FERRY_DEMO_PORT", "1"), ("FERRY_DEMO_VERBOSE", "true")],
    ))
    .expect("load");
    assert_eq!(c.port, 1);
    assert!(c.verbose);
}

#[test]
fn unknown_field_in_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "tls:\n  cert_pth: /x\n").expect("write");
    let e = load::<Demo>(&sources(Some(file), &[])).expect_err("unknown field");
    assert_eq!(e.field(), Some("tls.cert_pth"), "{e}");
}

#[test]
fn unknown_env_key_is_named() {
    let e = load::<Demo>(&sources(None, &[("FERRY_DEMO_PORTT", "1")])).expect_err("unknown");
    assert_eq!(e.field(), Some("portt"), "{e}");
}

#[test]
fn mistyped_value_is_named() {
    let e = load::<Demo>(&sources(None, &[("FERRY_DEMO_PORT", "eighty")])).expect_err("bad type");
    assert_eq!(e.field(), Some("port"), "{e}");
    assert!(e.to_string().contains("port"));
}

#[test]
fn broken_yaml_and_missing_file_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "port: [").expect("write");
    assert!(matches!(
        load::<Demo>(&sources(Some(file), &[])),
        Err(ConfigError::Yaml { .. })
    ));
    let missing = dir.path().join("nope.yaml");
    assert!(matches!(
        load::<Demo>(&sources(Some(missing), &[])),
        Err(ConfigError::Read { .. })
    ));
    let list = dir.path().join("list.yaml");
    std::fs::write(&list, "- 1\n").expect("write");
    assert!(matches!(
        load::<Demo>(&sources(Some(list), &[])),
        Err(ConfigError::NotAMapping { .. })
    ));
}

#[test]
fn default_yaml_round_trips() {
    let y = default_yaml::<Demo>();
    let back: Demo = serde_saphyr::from_str(&y).expect("round trip");
    assert_eq!(back, Demo::default());
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WithSecret {
    password: String,
    password_file: Option<PathBuf>,
    tls: crate::tls::TlsConfig,
}

impl Settings for WithSecret {
    fn check(&self) -> Result<(), ConfigError> {
        self.tls.validate("tls")
    }

    fn read_secrets(&mut self) -> Result<(), ConfigError> {
        read_secret("password", &mut self.password, &mut self.password_file)
    }
}

#[test]
fn secrets_come_from_files_without_their_newline_and_not_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").expect("write");
    let path = file.to_str().expect("utf-8");

    let c: WithSecret =
        load_checked(&sources(None, &[("FERRY_DEMO_PASSWORD_FILE", path)])).expect("loads");
    assert_eq!(c.password, "s3cret");
    assert_eq!(c.password_file, None, "read once, then forgotten");

    let e = load_checked::<WithSecret>(&sources(
        None,
        &[
            ("FERRY_DEMO_PASSWORD_FILE", path),
            ("FERRY_DEMO_PASSWORD", "inline"),
        ],
    ))
    .expect_err("both");
    assert_eq!(e.field(), Some("password"));

    let missing = dir.path().join("absent");
    let e = load_checked::<WithSecret>(&sources(
        None,
        &[("FERRY_DEMO_PASSWORD_FILE", missing.to_str().expect("utf-8"))],
    ))
    .expect_err("missing file");
    assert_eq!(e.field(), Some("password_file"));
    assert!(e.to_string().contains("absent"), "{e}");

    let e = load_checked::<WithSecret>(&sources(None, &[("FERRY_DEMO_TLS__CERT_PATH", "/c")]))
        .expect_err("a certificate without its key");
    assert_eq!(e.field(), Some("tls"));
}

/// A config with a shared section flattened in: `deny_unknown_fields` cannot be used beside `flatten`, so
/// `NoUnknownFields` takes what no field took.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
struct WithShared {
    port: u16,
    #[serde(flatten)]
    shared: Shared,
    #[serde(flatten)]
    unknown: NoUnknownFields,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
struct Shared {
    registry_url: String,
    send_timeout_ms: u64,
}

impl Default for WithShared {
    fn default() -> Self {
        Self {
            port: 1883,
            shared: Shared {
                registry_url: "http://r".into(),
                send_timeout_ms: 5000,
            },
            unknown: NoUnknownFields,
        }
    }
}

#[test]
fn a_flattened_section_keeps_flat_keys_and_unknown_keys_are_still_refused() {
    let c: WithShared = load(&sources(
        None,
        &[
            ("FERRY_DEMO_SEND_TIMEOUT_MS", "7"),
            ("FERRY_DEMO_PORT", "1"),
        ],
    ))
    .expect("load");
    assert_eq!((c.port, c.shared.send_timeout_ms), (1, 7));
    assert_eq!(c.shared.registry_url, "http://r");
    let e = load::<WithShared>(&sources(None, &[("FERRY_DEMO_SEND_TIMEOUT", "7")]))
        .expect_err("unknown");
    assert_eq!(e.field(), Some("send_timeout"), "{e}");
    let yaml = default_yaml::<WithShared>();
    assert!(yaml.contains("send_timeout_ms: 5000"), "{yaml}");
    assert!(!yaml.contains("unknown"), "{yaml}");
}

#[test]
fn a_mistyped_value_in_a_flattened_section_is_named() {
    let e = load::<WithShared>(&sources(None, &[("FERRY_DEMO_SEND_TIMEOUT_MS", "soon")]))
        .expect_err("bad type");
    assert_eq!(e.field(), Some("send_timeout_ms"), "{e}");
}
