//! The request id a device gets with a command (`hono-cmd-req-id`) and echoes in its response's URI
//! (`/command/res/REQ_ID`), in Hono's format, so that the adapter keeps no per-command state to route the
//! response:
//!
//! ```text
//! F LL CORRELATION_ID REPLY_ID
//! ```
//! * `F`: `1` if the device id (and its `/`) was stripped from the front of the reply id, else `0`;
//! * `LL`: the correlation id's length in bytes, two lower-case hex digits;
//! * the correlation id, then the reply id: the part of the application's `reply-to`
//!   (`command_response/TENANT/REPLY_ID`) after the tenant.
//!
//! The same logic as the MQTT adapter's `topic::request_id` (deliberately duplicated rather than shared:
//! the adapters must not depend on each other, and the character set differs). Here the id must survive
//! as one URI path segment and as a header value without escaping, so it is limited to visible ASCII
//! without `/ ? # %`.

use std::fmt::Write as _;

/// Whether `c` can stand in a request id verbatim.
fn allowed(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '%')
}

/// Encodes a request id; `None` if it cannot be represented (a correlation id longer than 255 bytes, or a
/// character outside [`allowed`]): the caller refuses such a command rather than deliver one whose
/// response could not come back.
pub fn request_id(correlation_id: &str, reply_id: &str, device_stripped: bool) -> Option<String> {
    if correlation_id.len() > 0xff
        || !correlation_id.chars().all(allowed)
        || !reply_id.chars().all(allowed)
    {
        return None;
    }
    let mut out = String::with_capacity(3 + correlation_id.len() + reply_id.len());
    out.push(if device_stripped { '1' } else { '0' });
    // Writing to a String cannot fail.
    let _ = write!(out, "{:02x}", correlation_id.len());
    out.push_str(correlation_id);
    out.push_str(reply_id);
    Some(out)
}

/// Splits a request id into (correlation id, reply id, device stripped); the inverse of [`request_id`]
/// (hex digits in either case). `None` if it is not one.
pub fn parse_request_id(id: &str) -> Option<(&str, &str, bool)> {
    let stripped = match id.as_bytes().first()? {
        b'0' => false,
        b'1' => true,
        _ => return None,
    };
    let len_hex = id.get(1..3)?;
    if !len_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let len = usize::from_str_radix(len_hex, 16).ok()?;
    // `get` also refuses a length that ends inside a multi-byte character.
    let correlation_id = id.get(3..3 + len)?;
    let reply_id = id.get(3 + len..)?;
    Some((correlation_id, reply_id, stripped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_hono() {
        assert_eq!(request_id("abc", "r1", true).as_deref(), Some("103abcr1"));
        assert_eq!(request_id("abc", "", false).as_deref(), Some("003abc"));
        assert_eq!(request_id("", "r", false).as_deref(), Some("000r"));
        assert_eq!(
            request_id("cmd-1", "proton-replies", false).as_deref(),
            Some("005cmd-1proton-replies")
        );
    }

    #[test]
    fn ids_that_would_break_a_path_or_header_are_refused() {
        for bad in ["a/b", "a?b", "a#b", "a%2F", "a b", "a\nb", "é"] {
            assert_eq!(request_id(bad, "r", false), None, "{bad:?}");
            assert_eq!(request_id("c", bad, false), None, "{bad:?}");
        }
        assert_eq!(request_id(&"x".repeat(256), "r", false), None);
        assert!(request_id(&"x".repeat(255), "r", false).is_some());
    }

    #[test]
    fn round_trips() {
        for (c, r, s) in [
            ("abc", "r1", true),
            ("", "", false),
            ("x".repeat(255).as_str(), "reply", false),
            ("0a1", "zz", false),
        ] {
            let id = request_id(c, r, s).expect("encodes");
            assert_eq!(parse_request_id(&id), Some((c, r, s)), "{id}");
        }
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in ["", "2", "0", "00", "0g1a", "005abc", "1ff"] {
            assert_eq!(parse_request_id(bad), None, "{bad:?}");
        }
        assert_eq!(parse_request_id("0FFx"), None);
        assert_eq!(
            parse_request_id("00A0123456789"),
            Some(("0123456789", "", false))
        );
    }
}
