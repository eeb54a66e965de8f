//! Drives the adapter's real HTTP/1.1 connection handling ([`crate::serve_connection`]) with random
//! requests, for the `http_request` fuzz target (fuzz/) and the stable property test
//! (tests/requests.rs). Not part of the adapter's API: nothing in the adapter calls it.
//!
//! [`generate`] builds, from any source of [`Entropy`] (libFuzzer's bytes through `arbitrary`, or a
//! seeded PRNG), a few requests for one keep-alive connection: methods, Hono's paths and near misses,
//! `authorization` (valid, wrong, malformed), `content-type`, `content-length` that matches, lies or is
//! not a number, chunked bodies (well-formed or not), `hono-ttd`, `qos-level`, `hono-cmd-status`, bodies.
//! [`run`] writes them to an in-memory connection served by the adapter, reads and discards the
//! responses, and ends the connection: the adapter must let it go within the bound.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::Shared;

/// Where random choices come from: libFuzzer's input (through `arbitrary::Unstructured`) or a PRNG.
pub trait Entropy {
    /// A number below `n`; 0 when `n` is 0.
    fn below(&mut self, n: u32) -> u32;
    /// Bytes for `buf` (zeros once the input is used up).
    fn fill(&mut self, buf: &mut [u8]);
    /// Whether there is input left for another request.
    fn has_more(&mut self) -> bool;
}

/// Credentials that the registry knows (`auth-id@tenant`, password), so requests get past the login.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub credentials: Vec<(String, String)>,
}

/// One request, as raw as a device could send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Written as it is, after the head (a chunked body is already framed).
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request's bytes on the wire.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

const METHODS: &[&str] = &[
    "POST", "POST", "PUT", "PUT", "GET", "DELETE", "OPTIONS", "X",
];

const PATHS: &[&str] = &[
    "/telemetry",
    "/event",
    "/telemetry/t1/d1",
    "/event/t1/d1",
    "/telemetry/t1/behind",
    "/command/res/",
    "/command/res/t1/d1/",
    "/telemetry/",
    "/telemetry//d1",
    "/telemetry/t1/",
    "/telemetry/t1/d1/extra",
    "/event/t2/x",
    "/",
    "/command",
    "/command/res",
    "telemetry",
    "*",
    "/telemetry?hono-ttd=1",
    "/event?hono-ttl=5",
    "/command/res/abc?hono-cmd-status=200",
];

const CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "text/plain",
    "text/plain",
    "application/json",
    "application/vnd.eclipse-hono-empty-notification",
    "application/octet-stream; charset=x",
    "",
    ";;;",
];

fn chance(e: &mut impl Entropy, one_in: u32) -> bool {
    e.below(one_in) == 0
}

fn pick<'a, T>(e: &mut impl Entropy, from: &'a [T]) -> &'a T {
    let n = u32::try_from(from.len()).unwrap_or(u32::MAX);
    &from[usize::try_from(e.below(n)).unwrap_or(0)]
}

fn bytes(e: &mut impl Entropy, max: u32) -> Vec<u8> {
    let len = e.below(max + 1);
    let mut v = vec![0; usize::try_from(len).unwrap_or(0)];
    e.fill(&mut v);
    v
}

/// Printable bytes of a header value or path segment.
fn token(e: &mut impl Entropy, max: u32) -> String {
    bytes(e, max)
        .into_iter()
        .map(|b| char::from(b'!' + b % 94))
        .collect()
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}").into_bytes()
}

fn path(e: &mut impl Entropy) -> String {
    match e.below(10) {
        0 => format!("/command/res/{}", token(e, 40)),
        1 => format!("/{}", token(e, 20)),
        2..=5 => (*pick(e, &PATHS[..5])).to_owned(),
        _ => (*pick(e, PATHS)).to_owned(),
    }
}

fn request(e: &mut impl Entropy, vocabulary: &Vocabulary) -> RawRequest {
    let mut headers: Vec<(String, Vec<u8>)> = vec![("host".into(), b"adapter".to_vec())];
    match e.below(8) {
        0 => {}
        // Names the registry does not know (wrong passwords for known names would lock them out for
        // the rest of the run).
        1 => {
            let user: &&str = pick(e, &["nobody@t1", "sensor1@nope", "sensor1"]);
            headers.push(("authorization".into(), basic(user, "x")));
        }
        2 => headers.push((
            "authorization".into(),
            pick(
                e,
                &[&b"Basic !!!"[..], b"Bearer abc", b"Basic", b"basic  Og=="],
            )
            .to_vec(),
        )),
        _ => {
            let (user, password) = pick(e, &vocabulary.credentials);
            headers.push(("authorization".into(), basic(user, password)));
        }
    }
    if !chance(e, 4) {
        headers.push((
            "content-type".into(),
            pick(e, CONTENT_TYPES).as_bytes().to_vec(),
        ));
    }
    if chance(e, 4) {
        let ttd = *pick(e, &["1", "0", "-1", "abc", "99999999999", "2"]);
        headers.push(("hono-ttd".into(), ttd.as_bytes().to_vec()));
    }
    if chance(e, 4) {
        headers.push((
            "qos-level".into(),
            pick(e, &["0", "1", "2", ""]).as_bytes().to_vec(),
        ));
    }
    if chance(e, 4) {
        headers.push((
            "hono-cmd-status".into(),
            pick(e, &["200", "404", "600", "+200", "x"])
                .as_bytes()
                .to_vec(),
        ));
    }
    if chance(e, 8) {
        headers.push(("hono-ttl".into(), token(e, 4).into_bytes()));
    }
    if chance(e, 10) {
        headers.push((token(e, 12), bytes(e, 16)));
    }
    let max_body = if chance(e, 16) { 3000 } else { 64 };
    let mut body = bytes(e, max_body);
    match e.below(16) {
        // Chunked, well-formed or cut off.
        0 => {
            headers.push(("transfer-encoding".into(), b"chunked".to_vec()));
            let mut framed = format!("{:x}\r\n", body.len()).into_bytes();
            framed.extend_from_slice(&body);
            framed.extend_from_slice(b"\r\n0\r\n\r\n");
            if chance(e, 3) {
                framed.truncate(usize::try_from(e.below(16)).unwrap_or(0));
            }
            body = framed;
        }
        // A length that lies (more than is sent would hold the connection until the body timeout, so
        // only where the next request's bytes follow to make up the difference).
        1 => {
            let declared = body
                .len()
                .saturating_sub(usize::try_from(e.below(8)).unwrap_or(0));
            headers.push(("content-length".into(), declared.to_string().into_bytes()));
        }
        2 => headers.push((
            "content-length".into(),
            pick(e, &[&b"abc"[..], b"-1", b"99999999999999999999", b"1, 2"]).to_vec(),
        )),
        // Both framings at once: a request smuggler's favourite.
        3 => {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
            headers.push(("transfer-encoding".into(), b"chunked".to_vec()));
        }
        _ => headers.push(("content-length".into(), body.len().to_string().into_bytes())),
    }
    if chance(e, 10) {
        headers.push(("expect".into(), b"100-continue".to_vec()));
    }
    let target = path(e);
    // Mostly the method the path takes (POST for a device's own, PUT for a named device).
    let named = target.split('?').next().unwrap_or("").matches('/').count() > 2;
    let method = match e.below(6) {
        0 => *pick(e, METHODS),
        _ if named && !target.starts_with("/command") => "PUT",
        _ => "POST",
    };
    RawRequest {
        method: method.to_owned(),
        target,
        headers,
        body,
    }
}

/// Up to `max` requests for one connection.
pub fn generate(e: &mut impl Entropy, vocabulary: &Vocabulary, max: usize) -> Vec<RawRequest> {
    let mut requests = Vec::new();
    while requests.len() < max && e.has_more() {
        requests.push(request(e, vocabulary));
    }
    requests
}

/// A connection the adapter did not let go within the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the adapter did not end the connection within the bound")]
pub struct Stuck;

/// What came back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The status of every response, in order (100 Continue included).
    pub statuses: Vec<u16>,
    /// The adapter closed the connection before the client ended it.
    pub closed_by_adapter: bool,
}

/// Writes `requests` to `client` (one connection, already open), reads what comes back until every
/// request has had an answer or nothing arrives for `quiet`, then ends the connection; the server must
/// close its side within `bound`.
pub async fn drive<C>(
    requests: &[RawRequest],
    client: C,
    quiet: Duration,
    bound: Duration,
) -> Result<Outcome, Stuck>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut wire = Vec::new();
    for r in requests {
        r.encode(&mut wire);
    }
    let (mut reader, mut writer) = tokio::io::split(client);
    let write = tokio::spawn(async move {
        // The adapter may close before reading everything; that is an answer too.
        let _ = writer.write_all(&wire).await;
        let _ = writer.flush().await;
        writer
    });
    let mut outcome = Outcome::default();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, reader.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                outcome.closed_by_adapter = true;
                break;
            }
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                outcome.statuses = statuses(&seen);
                if outcome.statuses.len() >= requests.len() && !requests.is_empty() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // End the connection: shut our side and wait for the adapter to close its own.
    let writer = match tokio::time::timeout(bound, write).await {
        Ok(Ok(w)) => Some(w),
        Ok(Err(e)) => panic!("the writer task failed: {e}"),
        Err(_) => None,
    };
    if let Some(mut w) = writer {
        let _ = w.shutdown().await;
        let drained = async {
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        if tokio::time::timeout(bound, drained).await.is_err() {
            return Err(Stuck);
        }
    } else if !outcome.closed_by_adapter {
        return Err(Stuck);
    }
    Ok(outcome)
}

/// The status codes of the responses in `wire` (bodies are short text, never a status line).
fn statuses(wire: &[u8]) -> Vec<u16> {
    const LINE: &[u8] = b"HTTP/1.1 ";
    wire.windows(LINE.len() + 3)
        .filter(|w| w.starts_with(LINE))
        .filter_map(|w| std::str::from_utf8(&w[LINE.len()..]).ok()?.parse().ok())
        .collect()
}

/// Runs `requests` over an in-memory connection served by the adapter's own connection handling. A panic
/// in the connection task is raised again here; `Err` when it does not end within `bound`.
pub async fn run(
    shared: &Arc<Shared>,
    requests: &[RawRequest],
    quiet: Duration,
    bound: Duration,
) -> Result<Outcome, Stuck> {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let (trigger, shutdown) = ferry_core::shutdown::channel();
    // A documentation address (TEST-NET-1): failed logins counted against it lock out no real client.
    let peer = std::net::SocketAddr::from(([192, 0, 2, 1], 40000));
    let task = tokio::spawn(crate::serve_connection(
        server,
        peer,
        None,
        shared.clone(),
        shutdown,
    ));
    let outcome = drive(requests, client, quiet, bound).await;
    let ended = tokio::time::timeout(bound, task).await;
    drop(trigger);
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the connection task failed: {e}"),
        Err(_) => return Err(Stuck),
    }
    outcome
}
