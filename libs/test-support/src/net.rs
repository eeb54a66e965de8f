//! Ports for tests that must tell a child process (a broker, a Python client) where to listen.

/// A TCP port on 127.0.0.1 that was free a moment ago, outside the kernel's ephemeral range
/// ([`ferry_core::net::probe_free_port`]).
///
/// Still racy, but only against another test probing the same port at the same moment, not against every
/// outgoing connection of the machine. Prefer binding `127.0.0.1:0` yourself and passing the listener
/// along, as Ferry's `run` functions allow; use this only for programs you cannot hand a socket to.
pub fn free_port() -> u16 {
    ferry_core::net::probe_free_port().expect("a free port on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .expect("the port free_port returned should still be free");
    }
}
