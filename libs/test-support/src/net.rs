//! Ports for tests that must tell a child process (a broker, a Python client) where to listen.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds port 0, reads the port the kernel picked and closes the socket. This is racy: another
/// process (or a parallel test) may take the port before the caller binds it. Prefer binding
/// `127.0.0.1:0` yourself and passing the listener along, as Ferry's `run` functions allow; use
/// this only for programs you cannot hand a socket to, and expect a rare "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port should always work");
    listener
        .local_addr()
        .expect("a bound listener has a local address")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .expect("the port free_port returned should still be free");
    }
}
