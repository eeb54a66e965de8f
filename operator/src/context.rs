//! What the reconcilers share: the Kubernetes client, the operator config, metrics, the event recorder
//! and the HTTP client for registries.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::{self, names, Defaults, OperatorPods};
use crate::crd::AddressSpace;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::registry_client::RegistryClient;
use crate::Config;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "ferry-operator";

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: "ferry-operator".into(),
            instance: (!config.identity.is_empty()).then(|| config.identity.clone()),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            client,
            config,
            metrics,
            recorder,
            http,
        }
    }

    pub fn defaults(&self) -> Defaults {
        Defaults {
            image_registry: self.config.image_registry.clone(),
            image_tag: self.config.image_tag.clone(),
            allowed_image_registries: self.config.allowed_image_registries.clone(),
            network_policies: self.config.network_policies.then(|| OperatorPods {
                namespace: self.config.operator_namespace.clone(),
                labels: self.config.operator_pod_labels.clone(),
            }),
            nats_image: self.config.nats_image.clone(),
        }
    }

    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Server-side apply of `obj` (field manager `ferry-operator`, forced): the answer is the object as
    /// stored, status included.
    pub async fn apply<K>(&self, obj: &K) -> Result<K, kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let namespace = obj.meta().namespace.as_deref().unwrap_or_default();
        let api: Api<K> = self.api(namespace);
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
    }

    /// Publishes an event about `obj`; a failure is logged, never fatal (events are best effort).
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }

    /// The management API client of `space`'s registry, with the admin token from its Secret.
    pub async fn registry(&self, space: &AddressSpace) -> Result<RegistryClient, Error> {
        let namespace = space.namespace().unwrap_or_default();
        let name = space.name_any();
        let secret_name = space
            .status
            .as_ref()
            .and_then(|s| s.admin_token_secret.clone())
            .unwrap_or_else(|| names::admin_token(&name));
        let secret = self.api::<Secret>(&namespace).get(&secret_name).await?;
        let token = secret_value(&secret, "token").ok_or_else(|| Error::SecretIncomplete {
            name: secret_name.clone(),
            key: "token".to_owned(),
        })?;
        let base = match &self.config.registry_url {
            Some(url) => url.clone(),
            None => format!(
                "https://{}.{namespace}.svc:{}",
                names::registry(&name),
                build::ports::REGISTRY
            ),
        };
        let http = if base.starts_with("https://") {
            self.http_trusting(&namespace, &names::tls(&name)).await?
        } else {
            self.http.clone()
        };
        Ok(RegistryClient::new(http, &base, token))
    }

    /// An HTTP client that trusts the CA of the address space's generated certificate (key `ca.crt`
    /// of `secret`) besides the system's roots: the registry serves https with that certificate.
    async fn http_trusting(&self, namespace: &str, secret: &str) -> Result<reqwest::Client, Error> {
        let tls = self.api::<Secret>(namespace).get(secret).await?;
        let incomplete = || Error::SecretIncomplete {
            name: secret.to_owned(),
            key: "ca.crt".to_owned(),
        };
        let pem = secret_value(&tls, "ca.crt").ok_or_else(incomplete)?;
        http_trusting_pem(&pem).ok_or_else(incomplete)
    }
}

/// An HTTP client for the registry that trusts the CA certificate(s) in `pem` besides the system's
/// roots; `None` when `pem` holds no certificate.
pub fn http_trusting_pem(pem: &str) -> Option<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(pem.as_bytes()).ok()?;
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(ca)
        .build()
        .ok()
}

/// A Secret value as text (from `data`, or `stringData` as a client may have written it).
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(v.0.clone())
            .ok()
            .map(|s| s.trim().to_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.trim().to_owned())
}
