//! The operator's one error type; [`Error::metric_label`] names it in `ferry_operator_reconcile_errors`.

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Build(#[from] crate::build::BuildError),
    #[error("generating a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("Secret {name} lacks key `{key}`")]
    SecretIncomplete { name: String, key: String },
    #[error("registry: {0}")]
    Registry(#[from] crate::registry_client::RegistryError),
    #[error("{0}")]
    Finalizer(String),
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "build",
            Self::Certificate(_) => "certificate",
            Self::SecretIncomplete { .. } => "secret_incomplete",
            Self::Registry(_) => "registry",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// Whether a kube error is the API server's 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a kube error is the API server's 409 (already exists / conflict).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
