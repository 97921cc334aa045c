//! The relay hub (R3): which realm is connected, and the requests waiting for its answers.
//! One connection per realm; a newer connection replaces the older one, whose waiting
//! requests then fail with 502. A request is any frame with an `id`
//! (`kms.request`, `membership.*`); the realm's answer frame carries the same `id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::{Error, Result};

/// What the core pushes down a realm connection: one JSON frame with an `id`.
#[derive(Debug)]
pub struct RelayRequest {
    pub id: Uuid,
    pub frame: Value,
}

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Value>>>>;

struct Conn {
    id: u64,
    tx: mpsc::Sender<RelayRequest>,
    pending: Pending,
}

/// A registered connection, held by its WebSocket task.
pub struct Registration {
    pub conn_id: u64,
    pub requests: mpsc::Receiver<RelayRequest>,
    pending: Pending,
}

impl Registration {
    /// Delivers the realm's answer frame to request `id`; false if nobody waits for it.
    pub fn answer(&self, id: Uuid, frame: Value) -> bool {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        waiter.is_some_and(|w| w.send(frame).is_ok())
    }
}

pub struct Hub {
    conns: Mutex<HashMap<String, Conn>>,
    next_id: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(timeout: Duration) -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            timeout,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Conn>>> {
        self.conns
            .lock()
            .map_err(|_| Error::Internal("relay lock poisoned"))
    }

    /// Registers a connection for `realm`, replacing (and so closing) an older one.
    pub fn register(&self, realm: &str) -> Result<Registration> {
        let (tx, rx) = mpsc::channel(256);
        let pending: Pending = Arc::default();
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let old = self.lock()?.insert(
            realm.to_owned(),
            Conn {
                id: conn_id,
                tx,
                pending: pending.clone(),
            },
        );
        if let Some(old) = old {
            tracing::info!(
                realm,
                old = old.id,
                new = conn_id,
                "realm reconnected; closing the older connection"
            );
        }
        Ok(Registration {
            conn_id,
            requests: rx,
            pending,
        })
    }

    /// Forgets `realm`'s connection if it is still `conn_id` (not already replaced).
    pub fn unregister(&self, realm: &str, conn_id: u64) {
        if let Ok(mut conns) = self.conns.lock()
            && conns.get(realm).is_some_and(|c| c.id == conn_id)
        {
            conns.remove(realm);
        }
    }

    pub fn is_connected(&self, realm: &str) -> bool {
        self.conns
            .lock()
            .is_ok_and(|c| c.get(realm).is_some_and(|c| !c.tx.is_closed()))
    }

    /// Whether `conn_id` is still `realm`'s current connection.
    pub fn is_current(&self, realm: &str, conn_id: u64) -> bool {
        self.conns.lock().is_ok_and(|c| {
            c.get(realm)
                .is_some_and(|c| c.id == conn_id && !c.tx.is_closed())
        })
    }

    /// Sends `kms_messages` to `realm` as one `kms.request` and waits for its answer.
    pub async fn request(&self, realm: &str, kms_messages: Vec<String>) -> Result<Vec<String>> {
        let answer = self
            .call(
                realm,
                |id| json!({"type": "kms.request", "id": id, "kmsMessages": kms_messages}),
            )
            .await?;
        if answer["type"] != "kms.response" {
            return Err(Error::BadRealmAnswer("expected kms.response"));
        }
        serde_json::from_value(answer["kmsMessages"].clone())
            .map_err(|_| Error::BadRealmAnswer("kmsMessages is not a list of strings"))
    }

    /// Sends the frame `build(id)` to `realm` and waits for the answer frame with that id.
    pub async fn call(&self, realm: &str, build: impl FnOnce(Uuid) -> Value) -> Result<Value> {
        let id = Uuid::new_v4();
        let frame = build(id);
        let (wait_tx, wait_rx) = oneshot::channel();
        let (tx, pending) = {
            let conns = self.lock()?;
            let conn = conns
                .get(realm)
                .ok_or_else(|| Error::RealmNotConnected(realm.to_owned()))?;
            conn.pending
                .lock()
                .map_err(|_| Error::Internal("relay lock poisoned"))?
                .insert(id, wait_tx);
            // Weak: the waiter must not keep the connection's pending table alive, or a
            // closed connection would look like a slow one (504 instead of 502).
            (conn.tx.clone(), Arc::downgrade(&conn.pending))
        };
        if tx.send(RelayRequest { id, frame }).await.is_err() {
            return Err(Error::RealmNotConnected(realm.to_owned()));
        }
        match tokio::time::timeout(self.timeout, wait_rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::RealmGone),
            Err(_) => {
                if let Some(p) = pending.upgrade()
                    && let Ok(mut p) = p.lock()
                {
                    p.remove(&id);
                }
                Err(Error::RealmTimeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_route_by_id_and_replacement_fails_waiters() {
        let hub = Arc::new(Hub::new(Duration::from_millis(300)));
        assert!(matches!(
            hub.request("kms://a", vec![]).await,
            Err(Error::RealmNotConnected(_))
        ));
        let mut reg = hub.register("kms://a").unwrap();
        let h = hub.clone();
        let call = tokio::spawn(async move { h.request("kms://a", vec!["m1".into()]).await });
        let req = reg.requests.recv().await.unwrap();
        assert_eq!(req.frame["kmsMessages"], json!(["m1"]));
        assert!(reg.answer(
            req.id,
            json!({"type": "kms.response", "id": req.id, "kmsMessages": ["r1"]})
        ));
        assert_eq!(call.await.unwrap().unwrap(), vec!["r1".to_owned()]);

        let h = hub.clone();
        let call = tokio::spawn(async move { h.request("kms://a", vec!["m2".into()]).await });
        let _req = reg.requests.recv().await.unwrap();
        let mut newer = hub.register("kms://a").unwrap();
        drop(reg);
        assert!(matches!(call.await.unwrap(), Err(Error::RealmGone)));
        hub.unregister("kms://a", 1); // the old id must not evict the newer connection
        assert!(hub.is_connected("kms://a"));
        let h = hub.clone();
        let call = tokio::spawn(async move { h.request("kms://a", vec!["m3".into()]).await });
        assert!(newer.requests.recv().await.is_some());
        assert!(matches!(call.await.unwrap(), Err(Error::RealmTimeout)));
    }
}
