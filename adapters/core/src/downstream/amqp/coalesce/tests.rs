use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// A stream that counts the writes that reach it.
struct Counting {
    inner: DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

fn pair() -> (Coalesce<Counting>, DuplexStream, Arc<AtomicUsize>) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let io = Coalesce::new(Counting {
        inner: ours,
        writes: writes.clone(),
    });
    (io, theirs, writes)
}

/// One poll of a read with nothing to read: what a connection task does before it sleeps.
async fn poll_read_once(io: &mut Coalesce<Counting>) {
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(std::time::Duration::from_millis(20), io.read(&mut byte)).await;
    assert!(r.is_err(), "nothing was sent to read");
}

#[tokio::test]
async fn frames_flushed_one_by_one_go_out_in_one_write_at_the_next_read() {
    let (mut io, mut peer, writes) = pair();
    for frame in [&b"frame-1;"[..], b"frame-2;", b"frame-3;"] {
        io.write_all(frame).await.expect("write");
        io.flush().await.expect("flush");
    }
    assert_eq!(writes.load(Ordering::SeqCst), 0, "held until the next read");
    poll_read_once(&mut io).await;
    assert_eq!(
        writes.load(Ordering::SeqCst),
        1,
        "one write for three frames"
    );
    let mut got = vec![0u8; 24];
    peer.read_exact(&mut got).await.expect("read");
    assert_eq!(
        &got, b"frame-1;frame-2;frame-3;",
        "bytes intact and in order"
    );
}

#[tokio::test]
async fn a_flush_past_the_soft_limit_writes_at_once() {
    let (mut io, mut peer, writes) = pair();
    let big = vec![7u8; SOFT_LIMIT];
    io.write_all(&big).await.expect("write");
    io.flush().await.expect("flush");
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    let mut got = vec![0u8; SOFT_LIMIT];
    peer.read_exact(&mut got).await.expect("read");
    assert_eq!(got, big);
}

#[tokio::test]
async fn shutdown_writes_what_is_due() {
    let (mut io, mut peer, _writes) = pair();
    io.write_all(b"close").await.expect("write");
    io.flush().await.expect("flush");
    io.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"close");
}

#[tokio::test]
async fn reads_pass_through_after_the_due_bytes_are_written() {
    let (mut io, mut peer, writes) = pair();
    io.write_all(b"ping").await.expect("write");
    io.flush().await.expect("flush");
    peer.write_all(b"pong").await.expect("peer write");
    let mut got = [0u8; 4];
    io.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"pong");
    // The read that found bytes waiting returned them before the yield was over; the next one writes.
    poll_read_once(&mut io).await;
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    let mut sent = [0u8; 4];
    peer.read_exact(&mut sent).await.expect("peer read");
    assert_eq!(&sent, b"ping");
}

/// What fe2o3's connection task does: takes the sessions' frames from a channel and writes and flushes
/// each, and polls the socket for reading in every turn of its loop.
async fn connection_task(
    mut io: Coalesce<Counting>,
    mut frames: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Coalesce<Counting> {
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            biased;
            frame = frames.recv() => match frame {
                Some(frame) => {
                    io.write_all(&frame).await.expect("write");
                    io.flush().await.expect("flush");
                }
                None => return io,
            },
            _ = io.read(&mut byte) => panic!("nothing was sent to read"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sessions_ready_in_the_same_round_share_one_write() {
    let (io, mut peer, writes) = pair();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let connection = tokio::spawn(connection_task(io, rx));
    // Ten sessions become ready together on the worker, as MQTT connections whose packets arrived in
    // one poll of the reactor; each queues one frame when it runs. The first frame wakes the connection
    // task into the worker's next slot, ahead of the other nine: without the yield it wrote that frame
    // alone.
    let senders = tx.clone();
    let sessions = tokio::spawn(async move {
        let sessions: Vec<_> = (0..10u8)
            .map(|i| {
                let tx = senders.clone();
                tokio::spawn(async move {
                    tx.send(vec![b'0' + i]).await.expect("queued");
                })
            })
            .collect();
        for s in sessions {
            s.await.expect("session");
        }
    });
    let mut got = [0u8; 10];
    peer.read_exact(&mut got).await.expect("read");
    // Each session's frames keep their order; between sessions the order is the scheduler's.
    got.sort_unstable();
    assert_eq!(&got, b"0123456789", "every frame, intact");
    sessions.await.expect("sessions");
    drop(tx);
    connection.await.expect("connection task");
    // Counted once the connection task is done: the peer can read the bytes before the count is made.
    assert_eq!(
        writes.load(Ordering::SeqCst),
        1,
        "one write for the round's ten frames"
    );
}
