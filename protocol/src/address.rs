//! Reply addresses: where a worker sends the answers for one connection.
//!
//! As in Django Channels, a `!` marks a single-reader channel: the part before
//! it names the interface (and so its reply stream), the part after it the
//! connection inside that interface.

use std::fmt;

/// `<interface-id>!<connection-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplyAddress {
    pub interface: String,
    pub conn: u64,
}

impl ReplyAddress {
    pub fn new(interface: impl Into<String>, conn: u64) -> Self {
        ReplyAddress {
            interface: interface.into(),
            conn,
        }
    }

    /// Parses `iface!123`; `None` when the text is not a reply address.
    pub fn parse(text: &str) -> Option<Self> {
        let (interface, conn) = text.rsplit_once('!')?;
        if interface.is_empty() {
            return None;
        }
        Some(ReplyAddress {
            interface: interface.to_owned(),
            conn: conn.parse().ok()?,
        })
    }
}

impl fmt::Display for ReplyAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}!{}", self.interface, self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let address = ReplyAddress::new("if-1a2b", 42);
        assert_eq!(address.to_string(), "if-1a2b!42");
        assert_eq!(ReplyAddress::parse("if-1a2b!42"), Some(address));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(ReplyAddress::parse("no-bang"), None);
        assert_eq!(ReplyAddress::parse("!5"), None);
        assert_eq!(ReplyAddress::parse("x!notanumber"), None);
    }
}
