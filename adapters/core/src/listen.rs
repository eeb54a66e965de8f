//! The listeners both adapters open for devices, the same way: plain, TLS when a certificate is
//! configured (client certificates requested, not required, and checked per tenant after the handshake),
//! and the admin server when it has a port of its own. Connections are then accepted by the loop every
//! Ferry component shares ([`ferry_core::net::Listeners::serve`]).

use std::net::SocketAddr;

use ferry_core::admin::Admin;
use ferry_core::net::{BindError, Listeners};
use ferry_core::shutdown::Shutdown;
use ferry_core::tls::{TlsConfig, TlsError};

/// Where an adapter listens, as its configuration gives it.
#[derive(Debug, Clone, Copy)]
pub struct Listen<'a> {
    /// The plain protocol's name in errors (`MQTT`, `HTTP`).
    pub protocol: &'static str,
    /// The TLS protocol's name in errors (`MQTTS`, `HTTPS`).
    pub tls_protocol: &'static str,
    /// The plain listener.
    pub bind: SocketAddr,
    /// The TLS listener, opened only when `tls` names a certificate.
    pub tls_bind: SocketAddr,
    /// The listener certificate and key.
    pub tls: &'a TlsConfig,
    /// ALPN protocols the TLS listener offers (`http/1.1` for HTTPS, none for MQTTS).
    pub alpn: &'a [&'a [u8]],
    /// The admin server's own port (`/live`, `/ready`, `/metrics`), if any.
    pub admin_bind: Option<SocketAddr>,
}

/// Why an adapter could not open its listeners.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The certificate or key could not be loaded (`tls`).
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// A port could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Binds the device listeners and starts the admin server.
pub async fn listen(
    l: &Listen<'_>,
    admin: &Admin,
    shutdown: &Shutdown,
) -> Result<Listeners, ListenError> {
    let tls = match (&l.tls.cert_path, &l.tls.key_path) {
        (Some(cert), Some(key)) => Some((
            l.tls_protocol,
            l.tls_bind,
            crate::tls::acceptor(cert, key, l.alpn)?,
        )),
        _ => None,
    };
    let listeners = Listeners::bind(l.protocol, l.bind, tls).await?;
    ferry_core::admin::serve_admin(l.admin_bind, admin, shutdown).await?;
    Ok(listeners)
}
