//! Layered configuration: defaults → optional YAML file → `FERRY_<COMPONENT>_*` environment → flags.
//!
//! Every component has one `Config` that derives `Serialize`, `Deserialize` (with `deny_unknown_fields`)
//! and `Default`. [`load`] merges the layers as JSON trees and deserializes the result once, so an unknown
//! or mistyped field in any layer is refused with its dotted path (`database.url: invalid type ...`); the
//! binary then exits with [`EXIT_CONFIG`] (64, `EX_USAGE`) before binding any port.
//!
//! Environment keys: the part after the prefix, lower-cased; `__` descends into a section
//! (`FERRY_REGISTRY_TLS__CERT_PATH` → `tls.cert_path`). Values become numbers or booleans only where the
//! default is one, so a token of digits stays a string; for optional fields without a default the value is
//! read as a YAML scalar (quote it to force a string).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// The exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: Box<serde_saphyr::Error>,
    },
    #[error("config file {path} must hold a mapping at the top level")]
    NotAMapping { path: PathBuf },
    #[error("config field `{field}`: cannot read {path}: {source}")]
    ReadFile {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

impl ConfigError {
    /// A field whose value cannot work: `field` names it as the settings do, `message` says why.
    pub fn invalid(field: &str, message: &str) -> Self {
        Self::Field {
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The dotted path of the offending field, when one is known.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Field { field, .. } | Self::ReadFile { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The layers above the defaults. Tests fill `env` from a list instead of the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// YAML file, if any.
    pub file: Option<PathBuf>,
    /// Prefix of the environment keys, e.g. `FERRY_REGISTRY_`.
    pub env_prefix: String,
    /// Environment pairs to consider (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// Flags given on the command line, as a JSON object of the same shape as the config.
    pub flags: Map<String, Value>,
}

impl Sources {
    /// Sources from the process environment with the given prefix.
    pub fn from_env(env_prefix: &str, file: Option<PathBuf>) -> Self {
        Self {
            file,
            env_prefix: env_prefix.to_owned(),
            env: std::env::vars().collect(),
            flags: Map::new(),
        }
    }

    /// Adds a flag value at a dotted path (`"tls.cert_path"`), ignoring `None`.
    pub fn flag<V: Serialize>(mut self, path: &str, value: Option<V>) -> Self {
        if let Some(v) = value.and_then(|v| serde_json::to_value(v).ok()) {
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            let mut tree = Value::Object(std::mem::take(&mut self.flags));
            insert_path(&mut tree, &path, v);
            if let Value::Object(map) = tree {
                self.flags = map;
            }
        }
        self
    }
}

/// Loads a config: defaults, then each layer of `sources`, then one strict deserialization.
pub fn load<T>(sources: &Sources) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = serde_json::to_value(T::default()).map_err(|e| ConfigError::Field {
        field: String::new(),
        message: format!("defaults do not serialize: {e}"),
    })?;
    let mut tree = defaults.clone();
    if let Some(path) = &sources.file {
        merge(&mut tree, read_yaml(path)?);
    }
    merge(
        &mut tree,
        env_layer(&defaults, &sources.env_prefix, &sources.env),
    );
    merge(&mut tree, Value::Object(sources.flags.clone()));
    deserialize(tree.clone()).map_err(|e| match e {
        // Through a `#[serde(flatten)]` section serde reports a mistyped value at the top ("."), so the
        // field is found by comparing the layers with the defaults.
        ConfigError::Field { field, message } if field == "." || field.is_empty() => {
            ConfigError::Field {
                field: mistyped(&defaults, &tree, "").unwrap_or(field),
                message,
            }
        }
        other => other,
    })
}

/// The dotted path of the first value in `tree` whose JSON type differs from its default's.
fn mistyped(defaults: &Value, tree: &Value, prefix: &str) -> Option<String> {
    let (Value::Object(defaults), Value::Object(tree)) = (defaults, tree) else {
        return None;
    };
    tree.iter().find_map(|(key, value)| {
        let default = defaults.get(key)?;
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let same_kind = std::mem::discriminant(default) == std::mem::discriminant(value);
        match (default, value) {
            (Value::Null, _) => None,
            (Value::Object(_), Value::Object(_)) => mistyped(default, value, &path),
            _ if !same_kind => Some(path),
            _ => None,
        }
    })
}

/// The defaults of `T` as YAML, for `--print-default-config`.
pub fn default_yaml<T: Serialize + Default>() -> String {
    serde_saphyr::to_string(&T::default()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value = serde_saphyr::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(ConfigError::NotAMapping {
            path: path.to_owned(),
        }),
    }
}

fn env_layer(defaults: &Value, prefix: &str, env: &[(String, String)]) -> Value {
    let mut layer = Value::Object(Map::new());
    if prefix.is_empty() {
        return layer;
    }
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let default = path.iter().try_fold(defaults, |v, k| v.get(k.as_str()));
        let value = match default {
            Some(Value::String(_)) => Value::String(raw.clone()),
            _ => {
                serde_saphyr::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.clone()))
            }
        };
        insert_path(&mut layer, &path, value);
    }
    layer
}

fn insert_path(tree: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for p in parents {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), value);
    }
}

/// Deep merge: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, layer: Value) {
    match (base, layer) {
        (Value::Object(b), Value::Object(l)) => {
            for (k, v) in l {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, l) => *b = l,
    }
}

fn deserialize<T: DeserializeOwned>(tree: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_path_to_error names an unknown key in the path already; older versions stop at its parent.
        let field = match unknown_field_name(&inner) {
            Some(name) if path == "." || path.is_empty() => name.to_owned(),
            Some(name) if !path.ends_with(name) => format!("{path}.{name}"),
            _ => path,
        };
        ConfigError::Field {
            field,
            message: inner,
        }
    })
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Refuses unknown keys in a `Config` that takes a shared section with `#[serde(flatten)]` (serde's
/// `deny_unknown_fields` does not work with `flatten`). Put it last, flattened:
/// `#[serde(flatten)] pub unknown: NoUnknownFields`; it takes whatever keys no other field took and
/// fails on the first, as `deny_unknown_fields` would (`unknown field `x``). It serializes to nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoUnknownFields;

impl Serialize for NoUnknownFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        serializer.serialize_map(Some(0))?.end()
    }
}

impl<'de> serde::Deserialize<'de> for NoUnknownFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoUnknownFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("no further fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::custom(format_args!(
                        "unknown field `{key}`"
                    ))),
                    None => Ok(NoUnknownFields),
                }
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// What [`load_checked`] asks of a component's `Config` beyond serde.
pub trait Settings: DeserializeOwned + Serialize + Default {
    /// Refuses settings that could not work; the error names the field.
    fn check(&self) -> Result<(), ConfigError>;
    /// Reads the secrets given as files (`*_file`, see [`secret`]) into their settings.
    fn read_secrets(&mut self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// [`load`], then the secret files read and the result checked: a configuration the component can
/// start with, or why not.
pub fn load_checked<T: Settings>(sources: &Sources) -> Result<T, ConfigError> {
    let mut config = load::<T>(sources)?;
    config.read_secrets()?;
    config.check()?;
    Ok(config)
}

/// [`load_checked`] for a binary's `main`: on bad configuration, says why on stderr (prefixed with
/// `program`) and exits with [`EXIT_CONFIG`] before anything is bound or started.
pub fn load_or_exit<T: Settings>(program: &str, sources: &Sources) -> T {
    match load_checked(sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{program}: bad configuration: {e}");
            std::process::exit(EXIT_CONFIG)
        }
    }
}

/// Reads `file` (when set) into `value` and forgets the file, for [`Settings::read_secrets`]; `field`
/// names the inline setting.
pub fn read_secret(
    field: &str,
    value: &mut String,
    file: &mut Option<PathBuf>,
) -> Result<(), ConfigError> {
    if let Some(path) = file.take() {
        *value = secret(field, value, Some(&path))?;
    }
    Ok(())
}

/// A secret setting given either inline (`value`, e.g. from the environment) or as a file (`file`, a
/// mounted Kubernetes Secret; its one trailing newline is not part of the secret). Giving both is
/// refused; giving neither yields the empty string. `field` names the inline setting.
pub fn secret(field: &str, value: &str, file: Option<&Path>) -> Result<String, ConfigError> {
    match file {
        None => Ok(value.to_owned()),
        Some(_) if !value.is_empty() => Err(ConfigError::Field {
            field: field.to_owned(),
            message: format!("give {field} or {field}_file, not both"),
        }),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                field: format!("{field}_file"),
                path: path.to_owned(),
                source,
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Ok(text.to_owned())
        }
    }
}

#[cfg(test)]
mod tests;
