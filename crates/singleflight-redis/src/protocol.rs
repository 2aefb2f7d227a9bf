// The Redis side of a flight: the lease, its renewal and release, the
// fencing generation, and the stream that delivers results.
//
// Invariants:
// - A lease's value is "{generation}:{token}". The generation comes from
//   `INCR` in the same script that sets the lease, so generations are
//   handed out in the order leases are taken, one per leader.
// - Renewal and release are compare-then-act scripts on the whole value: a
//   leader never extends or deletes a lease that is not its own, and never
//   takes one back once it is lost.
// - A leader publishes its result (with its generation) before it releases
//   its lease. So a waiter that finds the lease gone reads the stream once
//   more before it takes over: a result published in between is found.
// - Waiters read the stream from its start (ids after "0"), so a result
//   published before they began to read is never missed; they take only
//   results of the generation they saw or a later one.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisResult, Script, Value};

use crate::keys::Keys;

const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local generation = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], generation .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, tostring(generation)}
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// How long a key's generation counter outlives its last lease: long
/// enough that no result of an older generation is still in the stream.
const GENERATION_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// What taking the lease gave.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// This flight leads; `lease` is the value to renew and release.
    Leader { generation: u64, lease: String },
    /// Another flight holds the lease, of this generation.
    Held { generation: u64 },
}

/// A result in the stream.
#[derive(Debug)]
pub(crate) enum Published {
    Value(Vec<u8>),
    /// The leader's value was over the size limit: run the work.
    Oversize,
}

pub(crate) struct Protocol {
    client: Client,
    conn: ConnectionManager,
    /// Connections for waiters' blocking reads, kept for the next waiter.
    idle: std::sync::Mutex<Vec<MultiplexedConnection>>,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Protocol {
    pub(crate) async fn connect(client: Client, timeout: Duration) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let mut conn = client.get_connection_manager_with_config(config).await?;
        let release = Script::new(RELEASE);
        // Loaded now, so that a leader's publish and release go in one
        // pipeline by hash (after a restart of Redis, see the fallback).
        release.prepare_invoke().load_async(&mut conn).await?;
        Ok(Self {
            client,
            conn,
            idle: std::sync::Mutex::new(Vec::new()),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release,
        })
    }

    pub(crate) async fn acquire(
        &self,
        keys: &Keys,
        token: &str,
        lease: Duration,
    ) -> RedisResult<Acquired> {
        let (took, value): (i64, String) = self
            .acquire
            .key(&keys.lease)
            .key(&keys.generation)
            .arg(token)
            .arg(millis(lease))
            .arg(GENERATION_TTL_MS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if took == 1 {
            let generation = value.parse().unwrap_or(0);
            Ok(Acquired::Leader {
                generation,
                lease: format!("{generation}:{token}"),
            })
        } else {
            Ok(Acquired::Held {
                generation: generation_of(&value),
            })
        }
    }

    /// Extends the lease if it is still `lease`; false when it was lost.
    pub(crate) async fn renew(
        &self,
        keys: &Keys,
        lease_value: &str,
        lease: Duration,
    ) -> RedisResult<bool> {
        let renewed: i64 = self
            .renew
            .key(&keys.lease)
            .arg(lease_value)
            .arg(millis(lease))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes the lease if it is still `lease`.
    pub(crate) async fn release(&self, keys: &Keys, lease_value: &str) -> RedisResult<bool> {
        let released: i64 = self
            .release
            .key(&keys.lease)
            .arg(lease_value)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(released == 1)
    }

    /// Appends a result of `generation` to the stream, which expires
    /// `keep` after the last one, then releases `lease_value` if it is
    /// still the lease: one round trip, in that order (waiters rely on it).
    /// Returns whether the lease was still ours.
    pub(crate) async fn publish_and_release(
        &self,
        keys: &Keys,
        generation: u64,
        published: &Published,
        keep: Duration,
        lease_value: &str,
    ) -> RedisResult<bool> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&keys.results)
            .arg("MAXLEN")
            .arg("~")
            .arg(16)
            .arg("*")
            .arg("g")
            .arg(generation);
        match published {
            Published::Value(bytes) => xadd.arg("v").arg(bytes.as_slice()),
            Published::Oversize => xadd.arg("oversize").arg(1),
        };
        let mut release = redis::cmd("EVALSHA");
        release
            .arg(self.release.get_hash())
            .arg(1)
            .arg(&keys.lease)
            .arg(lease_value);
        let mut pipe = redis::pipe();
        pipe.add_command(xadd)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&keys.results)
            .arg(millis(keep))
            .ignore()
            .add_command(release);
        let mut conn = self.conn.clone();
        match pipe.query_async::<(i64,)>(&mut conn).await {
            Ok((released,)) => Ok(released == 1),
            // The script was not loaded on this server yet (a restart):
            // the result is in; release by the script itself.
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.release(keys, lease_value).await
            }
            Err(error) => Err(error),
        }
    }

    /// A connection of its own for a waiter's blocking reads, which would
    /// hold up every other command on a shared one: an idle one, or new.
    pub(crate) async fn waiter_connection(
        &self,
        timeout: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Keeps a waiter's connection for the next waiter (a few at most).
    pub(crate) fn return_waiter_connection(&self, conn: MultiplexedConnection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < 16 {
            idle.push(conn);
        }
    }

    /// The lease's generation and the time it has left (`None`: no expiry),
    /// if a lease is held.
    pub(crate) async fn held(
        conn: &mut MultiplexedConnection,
        keys: &Keys,
    ) -> RedisResult<Option<(u64, Option<Duration>)>> {
        let (value, left): (Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&keys.lease)
            .cmd("PTTL")
            .arg(&keys.lease)
            .query_async(conn)
            .await?;
        // -1: a lease with no expiry (not one of ours): wait a whole span;
        // -2: it expired between the two commands: look again soon.
        let left = match left {
            -1 => None,
            left => Some(Duration::from_millis(u64::try_from(left).unwrap_or(0))),
        };
        Ok(value.map(|value| (generation_of(&value), left)))
    }

    /// The results after `after` (a stream id), waiting up to `block` for
    /// one when there is none (`None`: not at all).
    pub(crate) async fn read(
        conn: &mut MultiplexedConnection,
        keys: &Keys,
        after: &str,
        block: Option<Duration>,
    ) -> RedisResult<Vec<(String, u64, Published)>> {
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(16);
        if let Some(block) = block {
            xread.arg("BLOCK").arg(millis(block).max(1));
        }
        xread.arg("STREAMS").arg(&keys.results).arg(after);
        let reply: Value = xread.query_async(conn).await?;
        Ok(entries(reply))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The generation of a lease value, "{generation}:{token}".
fn generation_of(lease: &str) -> u64 {
    lease
        .split(':')
        .next()
        .and_then(|generation| generation.parse().ok())
        .unwrap_or(0)
}

/// The entries of an `XREAD` reply of one stream: id, generation, result.
fn entries(reply: Value) -> Vec<(String, u64, Published)> {
    let mut found = Vec::new();
    let Value::Array(streams) = reply else {
        return found;
    };
    for stream in streams {
        let Value::Array(mut stream) = stream else {
            continue;
        };
        let Some(Value::Array(items)) = stream.pop() else {
            continue;
        };
        for item in items {
            let Value::Array(mut item) = item else {
                continue;
            };
            let (Some(Value::Array(fields)), Some(Value::BulkString(id))) =
                (item.pop(), item.pop())
            else {
                continue;
            };
            let mut generation = None;
            let mut published = None;
            let mut fields = fields.into_iter();
            while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
                (fields.next(), fields.next())
            {
                match name.as_slice() {
                    b"g" => {
                        generation = std::str::from_utf8(&value)
                            .ok()
                            .and_then(|g| g.parse().ok())
                    }
                    b"v" => published = Some(Published::Value(value)),
                    b"oversize" => published = Some(Published::Oversize),
                    _ => {}
                }
            }
            if let (Some(generation), Some(published)) = (generation, published) {
                found.push((
                    String::from_utf8_lossy(&id).into_owned(),
                    generation,
                    published,
                ));
            }
        }
    }
    found
}
