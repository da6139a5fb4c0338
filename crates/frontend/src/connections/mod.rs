//! What a client can make the server hold, bounded: connections, time, and the memory of
//! requests still arriving. Both ports share one [`Connections`].
//!
//! tonic and axum serve the protocols; this module sits under them and around them:
//! - [`listener`] admits each accepted TCP connection: over [`ConnectionLimits::max_connections`]
//!   the connection idle the longest is closed to make room (a flood of idle connections
//!   cannot lock a healthy client out), and if none is idle the new one is refused. Accept
//!   errors (out of file descriptors) pause the accept loop instead of spinning.
//! - Each admitted connection's IO ([`listener::Tracked`]) can be closed from outside: a sweep
//!   closes connections that sent no request within [`ConnectionLimits::header_timeout`] of
//!   opening, or had none in flight for [`ConnectionLimits::idle_timeout`]; a shutdown closes
//!   what is still open after [`ConnectionLimits::drain_timeout`].
//! - [`requests`] is a tower layer on both ports' services: it counts each connection's
//!   requests in flight (a request holds its connection busy until its response body ends),
//!   charges the bytes of messages still arriving to one budget shared by every connection
//!   ([`ConnectionLimits::request_memory`]), and fails a request whose unfinished message sends
//!   nothing for [`ConnectionLimits::body_timeout`].

pub(crate) mod listener;
pub(crate) mod requests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The bounds on what clients can make the server hold; every one has a default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// Open connections, both ports together. [`Server`](crate::Server) lowers it to fit
    /// the process's open-file limit (`ulimit -n`), keeping room for the models and the store.
    pub max_connections: usize,
    /// A new connection must have sent a request (TLS handshake and headers included)
    /// within this time, or it is closed.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// At shutdown, readiness turns false at once and the ports keep serving for this long
    /// (so that a load balancer or Kubernetes, which notice through readiness probes or
    /// endpoint updates, stop sending new requests first); then they stop accepting.
    pub drain_delay: Duration,
    /// At shutdown, once the ports stop accepting, requests in flight get this long to
    /// finish; then every connection still open is closed.
    pub drain_timeout: Duration,
    /// Bytes of messages still being received, all connections and streams together; a
    /// message that would go past it fails with `RESOURCE_EXHAUSTED`.
    pub request_memory: usize,
    /// A message being received that sends nothing for this long fails (gRPC: a message
    /// started on a stream; HTTP: the request body).
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            // A server on its own has no balancer to tell; deploy/ sets one.
            drain_delay: Duration::ZERO,
            // Under Kubernetes' default 30 s grace period, so a drain ends before SIGKILL.
            drain_timeout: Duration::from_secs(20),
            request_memory: 512 << 20,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// File descriptors kept out of the connection limit, for the models' files, the store, the
/// repository watcher and the listeners.
const DESCRIPTORS_RESERVED: u64 = 256;

impl ConnectionLimits {
    /// These limits with `max_connections` lowered, if needed, to fit an open-file limit of
    /// `nofile` descriptors.
    pub fn fitted_to(mut self, nofile: u64) -> Self {
        let room = nofile.saturating_sub(DESCRIPTORS_RESERVED).max(1);
        self.max_connections = self.max_connections.min(room as usize);
        self
    }
}

/// The open connections of both ports, and the budget of requests being received.
pub(crate) struct Connections {
    limits: ConnectionLimits,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    pub(crate) budget: requests::RequestBudget,
}

/// One open connection as the limits see it.
pub(crate) struct Connection {
    id: u64,
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    closing: CancellationToken,
    in_flight: AtomicUsize,
    /// Whether a request has arrived on it (before that, `header_timeout` applies).
    served: AtomicBool,
    /// When it last had a request end (or opened), in milliseconds since `Connections::epoch`.
    last_active: AtomicU64,
    epoch: Instant,
}

impl Connection {
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last_active.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(self.epoch + since))
    }

    fn touch(&self) {
        let millis = self.epoch.elapsed().as_millis() as u64;
        self.last_active.store(millis, Ordering::Relaxed);
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub(crate) fn start_request(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Closes the connection: its IO fails from now on, so the protocol stack drops it.
    pub(crate) fn close(&self) {
        self.closing.cancel();
    }
}

/// A request in flight on a connection; the connection is busy while one exists.
pub(crate) struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            budget: requests::RequestBudget::new(limits.request_memory),
        })
    }

    pub(crate) fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection from `peer`, closing the one idle the longest if the limit
    /// is reached; `None` when the limit is reached and every connection is busy.
    fn admit(&self, peer: SocketAddr) -> Option<Arc<Connection>> {
        let now = Instant::now();
        let mut open = self.lock();
        let live = open.values().filter(|c| !c.closing.is_cancelled());
        if live.clone().count() >= self.limits.max_connections {
            let idlest = live
                .filter_map(|c| Some((c.idle_for(now)?, c)))
                .max_by_key(|(idle, _)| *idle);
            let Some((_, idlest)) = idlest else {
                tracing::warn!(%peer, limit = self.limits.max_connections,
                    "connection refused: the limit is reached and no connection is idle");
                return None;
            };
            tracing::debug!(evicted = %idlest.peer, %peer, "closing the idlest connection to admit a new one");
            idlest.close();
        }
        let epoch = now;
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            closing: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_active: AtomicU64::new(0),
            epoch,
        });
        open.insert(connection.id, connection.clone());
        Some(connection)
    }

    /// Forgets a connection whose IO was dropped.
    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connections that sent no request in time, or were idle too long.
    fn sweep(&self) {
        let now = Instant::now();
        for connection in self.lock().values() {
            let Some(idle) = connection.idle_for(now) else {
                continue;
            };
            let limit = if connection.served.load(Ordering::Relaxed) {
                self.limits.idle_timeout
            } else {
                self.limits.header_timeout
            };
            if idle >= limit {
                connection.close();
            }
        }
    }

    /// Sweeps until `stop` is cancelled.
    pub(crate) async fn sweep_until(self: Arc<Self>, stop: CancellationToken) {
        let shortest = self.limits.header_timeout.min(self.limits.idle_timeout);
        let period = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.sweep(),
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Closes every open connection (the end of a drain).
    pub(crate) fn close_all(&self) {
        let open = self.lock();
        if !open.is_empty() {
            tracing::warn!(
                connections = open.len(),
                "the drain deadline passed: closing the connections still open"
            );
        }
        open.values().for_each(|c| c.close());
    }

    /// The number of open connections.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_idlest_connection_makes_room_and_busy_ones_stay() {
        let connections = Connections::new(ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        });
        let first = connections.admit(peer(1)).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = connections.admit(peer(2)).unwrap();
        let third = connections.admit(peer(3)).unwrap();
        assert!(first.closing.is_cancelled(), "the idlest one is closed");
        assert!(!second.closing.is_cancelled());
        connections.remove(first.id);
        // Both busy: a fourth is refused.
        let (_a, _b) = (second.start_request(), third.start_request());
        assert!(connections.admit(peer(4)).is_none());
        assert_eq!(connections.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_and_idle_connections_are_closed_by_the_sweep() {
        let connections = Connections::new(ConnectionLimits::default());
        let silent = connections.admit(peer(1)).unwrap();
        let served = connections.admit(peer(2)).unwrap();
        drop(served.start_request());
        let busy = connections.admit(peer(3)).unwrap();
        let _request = busy.start_request();
        tokio::time::advance(Duration::from_secs(11)).await;
        connections.sweep();
        assert!(
            silent.closing.is_cancelled(),
            "no request within the header timeout"
        );
        assert!(
            !served.closing.is_cancelled(),
            "idle for less than the idle timeout"
        );
        tokio::time::advance(Duration::from_secs(120)).await;
        connections.sweep();
        assert!(served.closing.is_cancelled());
        assert!(
            !busy.closing.is_cancelled(),
            "a request in flight keeps it open"
        );
    }

    #[test]
    fn the_connection_limit_fits_the_open_file_limit() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.fitted_to(1024).max_connections, 768);
        assert_eq!(limits.fitted_to(1 << 20).max_connections, 10_000);
    }
}
