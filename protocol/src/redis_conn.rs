//! Opening Redis connections with timeouts that fit each use.
//!
//! Two kinds of connection exist on both sides:
//! - one **shared** multiplexed connection for ordinary commands; it reconnects
//!   by itself after an outage (redis-rs `ConnectionManager`),
//! - **dedicated** connections for blocking reads (`XREAD BLOCK`,
//!   `XREADGROUP BLOCK`), so a parked read never delays other commands. Their
//!   response timeout must outlast the block time.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisResult};

/// Response timeout for ordinary commands.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared, self-reconnecting connection. It connects lazily, so a process
/// can start while Redis is away and catch up when it returns.
pub fn shared(client: &Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// A dedicated connection for blocking reads of up to `block`.
pub async fn blocking(client: &Client, block: Duration) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + COMMAND_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Backoff for reconnect loops: 50 ms doubling up to 2 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    /// Sleeps for the current delay and doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}
