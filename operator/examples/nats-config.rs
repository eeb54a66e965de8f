//! Writes the files of a managed NATS node as the operator renders them (config, users, certificate)
//! into a directory, for `nats-server -t` (charts/test.sh):
//!
//!     cargo run -p ferry-operator --example nats-config -- DIR [REPLICAS]
//!
//! prints the config's path. The address space is `ferry` in namespace `ferry-system`.

use ferry_operator::build::{self, nats};
use ferry_operator::crd::{AddressSpace, AddressSpaceSpec, MessagingMode, NatsSpec};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: nats-config DIR [REPLICAS]"))?;
    let replicas: i32 = args.next().as_deref().unwrap_or("3").parse()?;
    let mut spec = AddressSpaceSpec::default();
    spec.messaging.mode = MessagingMode::Nats;
    spec.messaging.nats = Some(NatsSpec {
        external: None,
        managed: Some(ferry_operator::crd::ManagedNatsSpec {
            replicas,
            ..Default::default()
        }),
    });
    let mut space = AddressSpace::new("ferry", spec);
    space.metadata.namespace = Some("ferry-system".into());
    space.metadata.uid = Some("local".into());
    let defaults = build::Defaults {
        image_registry: "ghcr.io/ferry-iot".into(),
        image_tag: "local".into(),
        allowed_image_registries: Vec::new(),
        network_policies: None,
        nats_image: build::DEFAULT_NATS_IMAGE.into(),
        internal_tls_fields: build::INTERNAL_TLS_FIELDS,
    };
    let config = nats::write_node_files(&space, &defaults, std::path::Path::new(&dir))?;
    println!("{}", config.display());
    Ok(())
}
