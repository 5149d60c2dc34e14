//! Redis (standalone or behind Sentinel), for cluster-wide limits and shared caches.
//!
//! Connections are made on first use and remade after a failure; while Redis is down
//! callers get an error quickly and the node reports it in /health/detailed.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::Mutex;

use crate::config::ConfigError;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1_000);

enum Target {
    Direct(Client),
    Sentinel(Mutex<SentinelClient>),
}

/// A Redis endpoint with a cached multiplexed connection.
pub struct Redis {
    target: Target,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.target {
            Target::Direct(_) => "direct",
            Target::Sentinel(_) => "sentinel",
        };
        f.debug_struct("Redis")
            .field("target", &kind)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Parses `redis://…`, `rediss://…` or `redis+sentinel://host:port,host:port/master`.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::from_key("redis.url", why);
        let target = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, master) = rest
                .split_once('/')
                .ok_or_else(|| bad("redis+sentinel:// needs /<master-name> after the hosts"))?;
            if master.is_empty() || hosts.is_empty() {
                return Err(bad("redis+sentinel:// needs hosts and a master name"));
            }
            let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}")).collect();
            let client = SentinelClient::build(
                sentinels,
                master.to_owned(),
                None,
                SentinelServerType::Master,
            )
            .map_err(|_| bad("invalid sentinel host list"))?;
            Target::Sentinel(Mutex::new(client))
        } else {
            Target::Direct(Client::open(url).map_err(|_| bad("is not a valid Redis URL"))?)
        };
        Ok(Self {
            target,
            connection: Mutex::new(None),
        })
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let client = match &self.target {
            Target::Direct(client) => client.clone(),
            // Ask the sentinels for the current master on every (re)connect, so a
            // failover is followed.
            Target::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await?,
        };
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A connection, made if there is none.
    pub async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut cached = self.connection.lock().await;
        if let Some(conn) = cached.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.connect().await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the cached connection after an error, so the next call reconnects.
    pub async fn reset(&self) {
        *self.connection.lock().await = None;
    }

    /// Round-trips a PING.
    pub async fn ping(&self) -> Result<(), String> {
        let result = async {
            let mut conn = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, result).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => {
                self.reset().await;
                Err(err.to_string())
            }
            Err(_) => {
                self.reset().await;
                Err("timed out".into())
            }
        }
    }
}
