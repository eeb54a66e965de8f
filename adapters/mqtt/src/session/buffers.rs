//! Read and write buffers lent to a session only while it has bytes to handle, so that an idle
//! connection holds none (B6: they were 1.3 KiB of every idle connection's 7).
//!
//! A session waits for its socket to become readable without a buffer, takes one when it is, and gives
//! it back once every packet in it is handled; only a packet that is still incomplete keeps the buffer
//! with the session. What goes back is the unused rest of the buffer (the packets read before it are
//! still referenced by their payloads, which travel on without a copy), so the next session to wake on
//! the same thread reads into it without an allocation. Each worker thread keeps a few: sessions hold
//! buffers only while they run, and one thread runs one at a time.

use std::cell::RefCell;

use bytes::BytesMut;

/// A fresh read buffer: most packets of a device are small, and a read that fills it has the buffer
/// grow ([`BUSY_READ`]).
pub(super) const READ: usize = 1024;

/// What a read buffer grows by once a read filled it, so a busy device is read in few system calls.
pub(super) const BUSY_READ: usize = 8192;

/// A fresh write buffer: a CONNACK, PUBACKs, a SUBACK; it grows for a large command.
const WRITE: usize = 256;

/// Below this much room a read buffer is not worth keeping (the next read would be a short one).
const MIN_ROOM: usize = 256;

/// A buffer with more room than this is freed rather than kept: a large packet's buffer should not stay
/// around for the small ones.
const MAX_ROOM: usize = 2 * BUSY_READ;

/// Buffers kept per thread and kind. A handful covers the sessions that run at once on one thread;
/// beyond it, what comes back is freed.
const KEPT: usize = 8;

thread_local! {
    static READS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

fn room(buf: &BytesMut) -> usize {
    buf.capacity() - buf.len()
}

fn take(kept: &'static std::thread::LocalKey<RefCell<Vec<BytesMut>>>) -> Option<BytesMut> {
    kept.with(|k| k.try_borrow_mut().ok()?.pop())
}

fn give(kept: &'static std::thread::LocalKey<RefCell<Vec<BytesMut>>>, buf: BytesMut) {
    let refused = kept.with(|k| match k.try_borrow_mut() {
        Ok(mut k) if k.len() < KEPT => {
            k.push(buf);
            None
        }
        _ => Some(buf),
    });
    drop(refused);
}

/// Makes sure `buf` has room for a read: an empty buffer without room (the session was idle) gets
/// one kept by this thread or a fresh one.
pub(super) fn ready_for_read(buf: &mut BytesMut) {
    if room(buf) >= MIN_ROOM {
        return;
    }
    if buf.is_empty() {
        while let Some(kept) = take(&READS) {
            if room(&kept) >= MIN_ROOM {
                *buf = kept;
                return;
            }
        }
        *buf = BytesMut::with_capacity(READ);
    } else {
        // A packet in the making: it needs room, and more is likely on its way.
        buf.reserve(BUSY_READ);
    }
}

/// Gives back an empty read buffer's room (a buffer holding part of a packet stays with the session).
pub(super) fn release_read(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let buf = std::mem::take(buf);
    if (MIN_ROOM..=MAX_ROOM).contains(&room(&buf)) {
        give(&READS, buf);
    }
}

/// Makes sure `out` has a buffer to write packets into.
pub(super) fn ready_for_write(out: &mut BytesMut) {
    if out.capacity() == 0 {
        *out = take(&WRITES).unwrap_or_else(|| BytesMut::with_capacity(WRITE));
    }
}

/// Gives back a write buffer once everything in it is written.
pub(super) fn release_write(out: &mut BytesMut) {
    if out.capacity() == 0 {
        return;
    }
    let mut buf = std::mem::take(out);
    buf.clear();
    if buf.capacity() <= MAX_ROOM {
        give(&WRITES, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_read_buffer_gives_its_room_back_and_the_next_reader_takes_it() {
        let mut a = BytesMut::new();
        ready_for_read(&mut a);
        assert!(room(&a) >= READ);
        a.extend_from_slice(b"one packet");
        let packet = a.split_to(a.len()).freeze();
        let rest = room(&a);
        release_read(&mut a);
        assert_eq!(a.capacity(), 0, "an idle session holds no buffer");
        let mut b = BytesMut::new();
        ready_for_read(&mut b);
        assert_eq!(room(&b), rest, "the rest of a's buffer, no new allocation");
        assert_eq!(
            &packet[..],
            b"one packet",
            "what was read before is untouched"
        );
    }

    #[test]
    fn part_of_a_packet_stays_with_the_session() {
        let mut a = BytesMut::new();
        ready_for_read(&mut a);
        a.extend_from_slice(b"\x30\x10half");
        release_read(&mut a);
        assert_eq!(&a[..], b"\x30\x10half");
        let full = a.capacity();
        a.extend_from_slice(&vec![0; room(&a)]);
        ready_for_read(&mut a);
        assert!(a.capacity() >= full + BUSY_READ, "a filled buffer grows");
    }

    #[test]
    fn write_buffers_are_lent_while_writing() {
        let mut out = BytesMut::new();
        ready_for_write(&mut out);
        out.extend_from_slice(b"\x20\x02\x00\x00");
        let capacity = out.capacity();
        release_write(&mut out);
        assert_eq!(out.capacity(), 0);
        let mut again = BytesMut::new();
        ready_for_write(&mut again);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_buffers() {
        let mut all: Vec<BytesMut> = (0..KEPT + 4)
            .map(|_| BytesMut::with_capacity(READ))
            .collect();
        for b in &mut all {
            release_read(b);
        }
        assert_eq!(READS.with(|k| k.borrow().len()), KEPT);
    }
}
