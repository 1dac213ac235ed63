//! Last contact of each device, kept in memory on the poll path and written to the store
//! in batches: polling must not write on every request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};

use super::{lock, DeviceRecord, Devices, Shard};
use crate::store::StoreError;

/// Records written per batch when flushing last-seen times.
const FLUSH_CHUNK: usize = 256;

/// In-memory, unflushed contact of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// When.
    pub at: DateTime<Utc>,
    /// From where.
    pub peer: SocketAddr,
}

impl Devices {
    /// Records a contact in memory (flushed later by [`Devices::flush_last_seen`]).
    pub fn mark_seen(&self, id: &str, peer: SocketAddr, now: DateTime<Utc>) {
        let mut shard = self.shard(id);
        Self::note_seen(&mut shard, id, peer, now);
    }

    pub(super) fn note_seen(shard: &mut Shard, id: &str, peer: SocketAddr, now: DateTime<Utc>) {
        match shard.seen.get_mut(id) {
            Some(s) if s.at > now => {}
            Some(s) => *s = Seen { at: now, peer },
            None => {
                shard.seen.insert(id.to_owned(), Seen { at: now, peer });
            }
        }
    }

    /// The last contact of `id` not yet flushed, if any.
    pub fn unflushed_seen(&self, id: &str) -> Option<Seen> {
        self.shard(id).seen.get(id).copied()
    }

    /// `rec` with the unflushed last contact applied, for display.
    pub fn with_seen(&self, rec: &DeviceRecord) -> DeviceRecord {
        let mut rec = rec.clone();
        if let Some(seen) = self.unflushed_seen(&rec.id) {
            if rec.last_seen.is_none_or(|t| t < seen.at) {
                rec.last_seen = Some(seen.at);
                rec.last_peer = Some(seen.peer.to_string());
            }
        }
        rec
    }

    /// Writes the last-seen times kept in memory to the store, in batches, then flushes.
    /// Devices decommissioned meanwhile are skipped. On failure the unwritten times go back
    /// to memory for the next attempt. Returns how many records were written.
    pub fn flush_last_seen(&self) -> Result<usize, StoreError> {
        let mut pending: Vec<(String, Seen)> = Vec::new();
        for shard in &self.shards {
            pending.extend(std::mem::take(&mut lock(shard).seen));
        }
        if pending.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        let mut done = 0;
        let result = (|| {
            let _guard = self.write_guard();
            for chunk in pending.chunks(FLUSH_CHUNK) {
                let mut ops = Vec::new();
                let mut recs = Vec::new();
                for (id, seen) in chunk {
                    let Some((raw, mut rec)) = self.read_raw(id)? else {
                        continue;
                    };
                    if rec.last_seen.is_some_and(|t| t >= seen.at) {
                        continue;
                    }
                    rec.last_seen = Some(seen.at);
                    rec.last_peer = Some(seen.peer.to_string());
                    ops.extend(Self::record_ops(Some(raw), &mut rec)?);
                    recs.push(rec);
                }
                self.store.apply_batch(ops)?;
                done += chunk.len();
                written += recs.len();
                for rec in recs {
                    self.cache_put(Arc::new(rec));
                }
            }
            Ok::<(), StoreError>(())
        })()
        .and_then(|()| self.store.flush());
        if let Err(e) = result {
            // Applied chunks are in the store (durable or not); requeue the rest. A failed
            // flush requeues nothing already applied: the next flush covers those.
            for (id, seen) in pending.into_iter().skip(done) {
                let mut shard = self.shard(&id);
                Self::note_seen(&mut shard, &id, seen.peer, seen.at);
            }
            return Err(e);
        }
        Ok(written)
    }

    /// Runs [`Devices::flush_last_seen`] every `every` until `shutdown` completes, then once
    /// more. Failures are logged and retried at the next tick.
    pub fn spawn_last_seen_flusher(
        self: &Arc<Self>,
        every: StdDuration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let devices = Arc::clone(self);
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut tick = tokio::time::interval(every.max(StdDuration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let stop = tokio::select! {
                    () = &mut shutdown => true,
                    _ = tick.tick() => false,
                };
                let d = Arc::clone(&devices);
                match tokio::task::spawn_blocking(move || d.flush_last_seen()).await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(records = n, "flushed last-seen times"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "flushing last-seen times failed"),
                    Err(e) => tracing::warn!(error = %e, "last-seen flush task failed"),
                }
                if stop {
                    break;
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use crate::devices::testing::{ident, peer, registry, req};
    use crate::devices::DEVICES_TREE;
    use crate::store::StoreExt;
    use chrono::Duration;

    #[test]
    fn last_seen_is_kept_in_memory_and_flushed_in_batches() {
        let (store, d, _a) = registry();
        let t0 = "2025-01-01T00:00:00Z".parse().unwrap();
        d.poll(&ident("d1", "A"), &req("hw"), peer(), t0).unwrap();
        let t1 = t0 + Duration::minutes(5);
        let other: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        assert!(d
            .poll_fast(&ident("d1", "A"), &req("hw"), other, t1)
            .is_some());
        // Nothing written yet.
        let stored: DeviceRecord = store.get_json(DEVICES_TREE, b"d1").unwrap().unwrap();
        assert_eq!(stored.last_seen, Some(t0));
        // Shown anyway.
        let shown = d.with_seen(&stored);
        assert_eq!(shown.last_seen, Some(t1));
        assert_eq!(d.flush_last_seen().unwrap(), 1);
        let stored: DeviceRecord = store.get_json(DEVICES_TREE, b"d1").unwrap().unwrap();
        assert_eq!(stored.last_seen, Some(t1));
        assert_eq!(stored.last_peer.as_deref(), Some("198.51.100.7:5000"));
        assert_eq!(d.flush_last_seen().unwrap(), 0);
        // A contact older than the stored one does not go back in time.
        d.mark_seen("d1", peer(), t0);
        assert_eq!(d.flush_last_seen().unwrap(), 0);
    }
}
