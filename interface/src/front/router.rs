//! The route table: which channel a request path belongs to.
//!
//! Routes are path prefixes (`/ws/chat/` → channel `chat`); the longest
//! matching prefix wins, so `/ws/` and `/ws/chat/` can coexist. There is one
//! table for WebSocket routes and one for HTTP routes; each target counts the
//! connections (or requests) it has open, for `/status`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One `PATH_PREFIX=CHANNEL` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub channel: String,
}

impl Route {
    pub fn new(prefix: &str, channel: &str) -> Result<Route, String> {
        if !prefix.starts_with('/') {
            return Err(format!("route prefix `{prefix}` must start with '/'"));
        }
        let valid_channel = !channel.is_empty()
            && channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid_channel {
            return Err(format!("channel `{channel}` must be letters, digits, '.', '-' or '_'"));
        }
        Ok(Route {
            prefix: prefix.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// Parses `PATH_PREFIX=CHANNEL`.
    pub fn parse(text: &str) -> Result<Route, String> {
        let (prefix, channel) = text
            .split_once('=')
            .ok_or_else(|| format!("route `{text}` must look like /ws/chat/=chat"))?;
        Route::new(prefix.trim(), channel.trim())
    }
}

/// A matched route: the channel and its stream key, shared by connections.
#[derive(Debug, Clone)]
pub struct Target {
    pub channel: Arc<str>,
    pub prefix: Arc<str>,
    open: Arc<AtomicUsize>,
}

impl Target {
    /// Counts one connection (or request) on this route until the guard drops.
    pub fn enter(&self) -> Entered {
        self.open.fetch_add(1, Ordering::Relaxed);
        Entered(self.open.clone())
    }

    /// Connections (or requests) open on this route now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One open connection on a route; dropping it ends the count.
#[derive(Debug)]
pub struct Entered(Arc<AtomicUsize>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All routes, longest prefix first.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Target>,
}

impl Routes {
    pub fn new(mut routes: Vec<Route>) -> Routes {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        routes.dedup_by(|a, b| a.prefix == b.prefix);
        Routes {
            routes: routes
                .into_iter()
                .map(|r| Target {
                    channel: r.channel.into(),
                    prefix: r.prefix.into(),
                    open: Arc::default(),
                })
                .collect(),
        }
    }

    pub fn lookup(&self, path: &str) -> Option<&Target> {
        self.routes.iter().find(|t| path.starts_with(&*t.prefix))
    }

    /// Every distinct channel routed to.
    pub fn channels(&self) -> Vec<Arc<str>> {
        let mut channels: Vec<Arc<str>> = self.routes.iter().map(|t| t.channel.clone()).collect();
        channels.sort();
        channels.dedup();
        channels
    }

    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.routes.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let routes = Routes::new(vec![
            Route::parse("/ws/=any").unwrap(),
            Route::parse("/ws/chat/=chat").unwrap(),
        ]);
        assert_eq!(&*routes.lookup("/ws/chat/room").unwrap().channel, "chat");
        assert_eq!(&*routes.lookup("/ws/echo/").unwrap().channel, "any");
        assert!(routes.lookup("/other").is_none());
    }

    #[test]
    fn counts_open_connections_per_route() {
        let routes = Routes::new(vec![Route::parse("/ws/chat/=chat").unwrap()]);
        let target = routes.lookup("/ws/chat/").unwrap().clone();
        let first = target.enter();
        let second = target.enter();
        assert_eq!(routes.lookup("/ws/chat/").unwrap().open(), 2);
        drop(first);
        drop(second);
        assert_eq!(target.open(), 0);
    }

    #[test]
    fn rejects_bad_routes() {
        assert!(Route::parse("ws/chat=chat").is_err());
        assert!(Route::parse("/ws/chat/").is_err());
        assert!(Route::parse("/ws/chat/=bad channel").is_err());
    }
}
