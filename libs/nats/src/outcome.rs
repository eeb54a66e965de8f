//! What a router or an adapter answers to a NATS request that carries a message: the AMQP outcome the
//! receiving side reached, so that the sender maps it to its own wire exactly as in embedded mode.
//!
//! | request | answered by | with |
//! |---|---|---|
//! | telemetry QoS 1 (`ferry.telemetry.T`) | the router that delivered it | the application's outcome |
//! | telemetry QoS 0 from HTTP ([`crate::headers::PRESETTLED`]) | the router that took it | `accepted` once handed to a consumer |
//! | a command (`ferry.command.INSTANCE`) | the adapter instance | the device's outcome (as on `command_internal`) |
//! | a command response (`ferry.command_response.T.R`) | the router holding `R` | the application's outcome |
//!
//! No answer at all has meaning too: NATS's "no responders" is "nobody consumes" (Hono's 503 at once, or
//! `released` to the application), and a timeout is "busy".
//!
//! The body is short text: the outcome's name, and for `rejected` the error condition and description on
//! the next two lines (`rejected\namqp:precondition-failed\ndevice disabled`).

/// An AMQP 1.0 outcome, as carried in a NATS reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Released,
    Modified,
    Rejected {
        condition: Option<String>,
        description: Option<String>,
    },
}

/// Longest reply body [`Outcome::decode`] reads; a longer one is not Ferry's.
pub const MAX_LEN: usize = 4096;

impl Outcome {
    /// The reply body.
    pub fn encode(&self) -> bytes::Bytes {
        match self {
            Self::Accepted => bytes::Bytes::from_static(b"accepted"),
            Self::Released => bytes::Bytes::from_static(b"released"),
            Self::Modified => bytes::Bytes::from_static(b"modified"),
            Self::Rejected {
                condition,
                description,
            } => {
                // A newline inside would shift the lines; the condition is a symbol and has none.
                let one_line = |s: &Option<String>| s.as_deref().unwrap_or("").replace('\n', " ");
                let mut s = String::from("rejected\n");
                s.push_str(&one_line(condition));
                s.push('\n');
                let mut d = one_line(description);
                d.truncate(MAX_LEN - s.len() - 4);
                s.push_str(&d);
                s.into()
            }
        }
    }

    /// Reads a reply body; `None` for anything [`Outcome::encode`] does not make.
    pub fn decode(body: &[u8]) -> Option<Self> {
        if body.len() > MAX_LEN {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        let mut lines = text.splitn(3, '\n');
        let word = lines.next()?;
        let rest = (lines.next(), lines.next());
        let some = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        match (word, rest) {
            ("accepted", (None, None)) => Some(Self::Accepted),
            ("released", (None, None)) => Some(Self::Released),
            ("modified", (None, None)) => Some(Self::Modified),
            ("rejected", (c, d)) => Some(Self::Rejected {
                condition: some(c),
                description: some(d),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips() {
        for o in [
            Outcome::Accepted,
            Outcome::Released,
            Outcome::Modified,
            Outcome::Rejected {
                condition: None,
                description: None,
            },
            Outcome::Rejected {
                condition: Some("amqp:precondition-failed".into()),
                description: Some("device non-existent/disabled".into()),
            },
        ] {
            assert_eq!(Outcome::decode(&o.encode()), Some(o.clone()), "{o:?}");
        }
    }

    #[test]
    fn a_newline_in_a_description_does_not_shift_the_lines() {
        let o = Outcome::Rejected {
            condition: Some("amqp:decode-error".into()),
            description: Some("bad\nreleased".into()),
        };
        assert_eq!(
            Outcome::decode(&o.encode()),
            Some(Outcome::Rejected {
                condition: Some("amqp:decode-error".into()),
                description: Some("bad released".into()),
            })
        );
    }

    #[test]
    fn anything_else_is_not_an_outcome() {
        for body in [
            &b""[..],
            b"ok",
            b"accepted\n",
            b"\xff",
            &[b'r'; MAX_LEN + 1],
        ] {
            assert_eq!(Outcome::decode(body), None, "{body:?}");
        }
    }
}
