//! Writes the files of a managed NATS node as the operator renders them (config, users, certificate)
//! into a directory, for `nats-server -t` (charts/test.sh):
//!
//!     cargo run -p ferry-operator --example nats-config -- DIR [ADDRESSSPACE.yaml]
//!
//! prints the config's path. The AddressSpace comes from the file (one YAML document, e.g. what
//! `helm template -f values-ha.yaml` renders), else it is `ferry` in `ferry-system` with a managed
//! cluster of three nodes.

use ferry_operator::build::{self, nats};
use ferry_operator::crd::{AddressSpace, AddressSpaceSpec, MessagingMode, NatsSpec};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: nats-config DIR [ADDRESSSPACE.yaml]"))?;
    let mut space = match args.next() {
        Some(file) => {
            let text = std::fs::read_to_string(&file)?;
            serde_saphyr::from_str::<AddressSpace>(&text)
                .map_err(|e| anyhow::anyhow!("{file}: not an AddressSpace: {e}"))?
        }
        None => {
            let mut spec = AddressSpaceSpec::default();
            spec.messaging.mode = MessagingMode::Nats;
            spec.messaging.nats = Some(NatsSpec::default());
            AddressSpace::new("ferry", spec)
        }
    };
    space
        .metadata
        .namespace
        .get_or_insert_with(|| "ferry-system".into());
    space.metadata.uid = Some("local".into());
    let defaults = build::Defaults {
        image_registry: "ghcr.io/ferry-iot".into(),
        image_tag: "local".into(),
        allowed_image_registries: Vec::new(),
        network_policies: None,
        nats_image: build::DEFAULT_NATS_IMAGE.into(),
    };
    let config = nats::write_node_files(&space, &defaults, std::path::Path::new(&dir))?;
    println!("{}", config.display());
    Ok(())
}
