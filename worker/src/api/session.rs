//! Sessions: per-client state in a Redis hash, written with the replies.
//!
//! A session is keyed by the client's `session_uuid` query parameter when it
//! gives one (so state survives reconnects), else by the connection's reply
//! address. It is loaded on first use and its changes are written in the same
//! atomic commit as the message's replies and acknowledgement.

use std::collections::HashMap;

use switchyard_protocol::SESSION_RESERVED;

/// The session of the connection being handled.
#[derive(Debug, Default, Clone)]
pub struct Session {
    values: HashMap<String, String>,
    /// Changes to write: `Some` to set, `None` to delete.
    changes: HashMap<String, Option<String>>,
}

impl Session {
    /// The session from its hash's fields; Switchyard's own fields (the
    /// outboxes, the expiry: [`SESSION_RESERVED`]) are left out.
    pub(crate) fn loaded(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Session {
        // Switchyard's fields are left out before anything is copied (an outbox is binary),
        // and valid UTF-8 is taken as it is.
        let text = |bytes: Vec<u8>| {
            String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        let values = fields
            .into_iter()
            .filter(|(field, _)| !field.starts_with(&[SESSION_RESERVED as u8]))
            .map(|(field, value)| (text(field), text(value)))
            .collect();
        Session {
            values,
            changes: HashMap::new(),
        }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.values.get(field).map(String::as_str)
    }

    /// Reads a field as a number, `0` when missing or not a number.
    pub fn get_u64(&self, field: &str) -> u64 {
        self.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Sets a field. Names starting with `~` are Switchyard's: such a write is
    /// refused (logged) and changes nothing.
    pub fn set(&mut self, field: impl Into<String>, value: impl ToString) {
        let field = field.into();
        if is_reserved(&field) {
            tracing::error!(%field, "session fields starting with '~' are Switchyard's; not set");
            return;
        }
        let value = value.to_string();
        self.values.insert(field.clone(), value.clone());
        self.changes.insert(field, Some(value));
    }

    /// Removes a field (not one of Switchyard's, see [`Session::set`]).
    pub fn remove(&mut self, field: &str) {
        if is_reserved(field) {
            tracing::error!(%field, "session fields starting with '~' are Switchyard's; not removed");
            return;
        }
        self.values.remove(field);
        self.changes.insert(field.to_owned(), None);
    }

    /// Fields to set and fields to delete.
    pub(crate) fn changes(&self) -> (Vec<(&str, &str)>, Vec<&str>) {
        let mut sets = Vec::new();
        let mut deletes = Vec::new();
        for (field, change) in &self.changes {
            match change {
                Some(value) => sets.push((field.as_str(), value.as_str())),
                None => deletes.push(field.as_str()),
            }
        }
        (sets, deletes)
    }
}

/// A session's changes, as the commit writes them: the session's id with the
/// fields to set and the fields to delete.
pub struct SessionWrite {
    /// The session id (its `session_uuid`, or the reply address).
    pub id: String,
    pub sets: Vec<(String, String)>,
    pub deletes: Vec<String>,
}

impl SessionWrite {
    /// A session that was only read (or, for a message handled again, may
    /// have been written by the first attempt): its outbox is still checked.
    pub fn check_only(id: String) -> SessionWrite {
        SessionWrite {
            id,
            sets: Vec::new(),
            deletes: Vec::new(),
        }
    }

    /// Whether the message changed the session.
    pub fn writes(&self) -> bool {
        !self.sets.is_empty() || !self.deletes.is_empty()
    }
}

/// Whether a session field is one of Switchyard's own.
fn is_reserved(field: &str) -> bool {
    field.starts_with(SESSION_RESERVED)
}

/// The session id for a connection: a well-formed `session_uuid`, else the
/// reply address.
pub(crate) fn session_id<'a>(query: &'a str, reply: &'a str) -> &'a str {
    query_value(query, "session_uuid")
        .filter(|id| {
            !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        })
        .unwrap_or(reply)
}

/// First value of a query parameter (percent-decoding is not needed for the
/// ids we read; values with escapes are returned as sent).
pub(crate) fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_prefers_a_valid_uuid() {
        assert_eq!(session_id("session_uuid=abc-123", "if!1"), "abc-123");
        assert_eq!(session_id("x=1&session_uuid=abc", "if!1"), "abc");
        assert_eq!(session_id("session_uuid=../etc", "if!1"), "if!1");
        assert_eq!(session_id("", "if!1"), "if!1");
    }

    #[test]
    fn tracks_changes() {
        let mut session = Session::loaded(vec![(b"a".to_vec(), b"1".to_vec())]);
        session.set("count", 5);
        session.remove("a");
        session.set("~x", 1);
        session.remove("~c");
        assert_eq!(session.get_u64("count"), 5);
        let (sets, deletes) = session.changes();
        assert_eq!(sets, vec![("count", "5")]);
        assert_eq!(deletes, vec!["a"]);
    }

    #[test]
    fn switchyards_own_fields_are_hidden() {
        let session = Session::loaded(vec![
            (b"count".to_vec(), b"2".to_vec()),
            (b"~o:if!1".to_vec(), b"2 \x83\xa1v\x01\xff".to_vec()),
            (b"~x".to_vec(), b"1796702975496".to_vec()),
        ]);
        assert_eq!(session.get("count"), Some("2"));
        assert_eq!(session.values.len(), 1);
    }
}
