//! The one error a write can fail validation with.
//!
//! The registry maps it to HTTP 400 with `{"error": message}`, so the message is what the user reads: it
//! names the offending field by its path in the request body (`credentials[0].secrets[1]: ...`).

/// A request body broke one of the registry's rules; the message names the field and says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// An error about the field at `path` (e.g. `trusted-ca[1].not-after`).
    pub(crate) fn at(path: &str, message: impl std::fmt::Display) -> Self {
        if path.is_empty() {
            Self(message.to_string())
        } else {
            Self(format!("{path}: {message}"))
        }
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Joins a parent path and a field name the way the messages print them.
pub(crate) fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else if field.starts_with('[') {
        format!("{parent}{field}")
    } else {
        format!("{parent}.{field}")
    }
}

/// Checks that an optional base64 field decodes (standard alphabet with padding, as Hono writes it).
pub(crate) fn check_base64(
    path: &str,
    field: &str,
    value: Option<&str>,
) -> Result<(), ValidationError> {
    match value {
        Some(v) if decode_base64(v).is_none() => Err(ValidationError::at(
            &join(path, field),
            "is not valid base64 (standard alphabet, padded)",
        )),
        _ => Ok(()),
    }
}

pub(crate) fn decode_base64(value: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(value).ok()
}

/// Checks that a validity window is not empty or inverted.
pub(crate) fn check_window(
    path: &str,
    not_before: Option<&chrono::DateTime<chrono::Utc>>,
    not_after: Option<&chrono::DateTime<chrono::Utc>>,
) -> Result<(), ValidationError> {
    match (not_before, not_after) {
        (Some(nb), Some(na)) if nb >= na => Err(ValidationError::at(
            path,
            format!(
                "not-before ({}) must be earlier than not-after ({})",
                nb.to_rfc3339(),
                na.to_rfc3339()
            ),
        )),
        _ => Ok(()),
    }
}
