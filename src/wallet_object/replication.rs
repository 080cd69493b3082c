//! Replication to the organization's D1 shard: the entries past the
//! shard's watermark, in bounded batches, applied only from the watermark
//! the object sent from; backoff on failure; restoring pruned entries of
//! organizations older than this layout; an operator's refill.

use super::*;

/// How long after the first unflushed entry its alarm replicates. One D1
/// batch then carries every entry of those 2 s (the spec allows 5 s).
pub(super) const FLUSH_DELAY_MS: f64 = 2_000.0;
/// When one alarm stopped with entries left (a refill): continue soon.
const FLUSH_CONTINUE_MS: f64 = 100.0;
/// Entries read per batch, and the most JSON one batch may carry: far under
/// D1's 2 MB limit on a statement's parameter.
const FLUSH_MAX_ENTRIES: usize = 2_000;
const FLUSH_MAX_BYTES: usize = 256 * 1024;
/// Batches per alarm, so a refill of a long history yields between alarms.
const FLUSH_MAX_BATCHES: usize = 25;

impl Instance {
    /// One alarm's work: replicate (restoring a pre-shard organization's
    /// entries first), then prune. Returns when the next alarm is due.
    pub(super) async fn replicate_and_prune(&self) -> Result<Option<f64>> {
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        let mut next_alarm = None;
        if let Some((org_id, shard)) = self.replica_target() {
            let replicated = match self.restore_legacy_entries(&org_id).await {
                Ok(true) => self.flush(&org_id, &shard).await,
                Ok(false) => Ok(false),
                Err(err) => Err(err),
            };
            match replicated {
                Ok(true) => self.replica.failures.set(0),
                Ok(false) => {
                    self.replica.failures.set(0);
                    next_alarm = Some(FLUSH_CONTINUE_MS);
                }
                Err(err) => {
                    let delay = self.backoff_ms();
                    console_error!(
                        "ledger replication of {org_id} to shard {shard} failed (attempt {}), retrying in {} s: {err}",
                        self.replica.failures.get(),
                        delay / 1000.0
                    );
                    next_alarm = Some(delay);
                }
            }
        }
        let settings = settings(&self.env).map_err(Error::RustError)?;
        // Sealing waits for R2; while it cannot, entries stay live and the
        // alarm comes back with the backoff.
        match self.archive(&settings.config).await {
            Ok(true) => next_alarm = next_alarm.or(Some(FLUSH_CONTINUE_MS)),
            Ok(false) => {}
            Err(err) => {
                console_error!("archiving the ledger failed, retrying: {err}");
                next_alarm = next_alarm.or(Some(self.backoff_ms()));
            }
        }
        self.watch_storage(&settings.config)?;
        let retention_ms = settings.config.idempotency_retention_seconds * 1000;
        let now_ms = Date::now().as_millis() as i64;
        let (pruned, more) = wallet_store::prune(&sql, now_ms - retention_ms)?;
        add(&self.replica.do_rows_written, pruned);
        if more {
            // A long history past the retention is pruned a bounded step per alarm.
            next_alarm = next_alarm.or(Some(FLUSH_CONTINUE_MS));
        }
        let unsent_too = !matches!(settings.events, Ok(Some(_)));
        let events_before = now_ms - EVENTS_RETENTION_DAYS * 86_400_000;
        let pruned = wallet_store::prune_events(&sql, events_before, unsent_too)?;
        add(&self.replica.do_rows_written, pruned);
        if next_alarm.is_none() && self.pending(&sql)? {
            next_alarm = Some(FLUSH_DELAY_MS);
        }
        Ok(next_alarm)
    }

    /// Counts one more failure in a row and answers the delay before the next
    /// attempt: 5 s, doubling, at most 5 min.
    pub(super) fn backoff_ms(&self) -> f64 {
        next_backoff_ms(&self.replica.failures)
    }

    /// Whether entries wait for the shard (any entry at all while the
    /// shard's watermark is not known yet).
    pub(super) fn pending(&self, sql: &SqlStorage) -> Result<bool> {
        wallet_store::has_entries_after(sql, self.replica.watermark.get().unwrap_or(0))
    }

    /// The organization and the D1 shard it replicates to.
    pub(super) fn replica_target(&self) -> Option<(String, String)> {
        self.wallet.borrow().as_ref().map(|w| {
            let shard = w.ledger_shard().unwrap_or(LEGACY_LEDGER_SHARD);
            (w.org_id().to_string(), shard.to_string())
        })
    }

    /// An organization created before the Durable Object kept every entry
    /// pruned its old ones once they were in D1 (`DB`); they are copied back
    /// here, newest first, a page per call, before anything else replicates.
    /// `Ok(true)`: nothing (more) to restore.
    pub(super) async fn restore_legacy_entries(&self, org_id: &str) -> Result<bool> {
        const PAGE: u32 = 1000;
        let next_seq = match self.wallet.borrow().as_ref() {
            Some(w) if w.ledger_shard().is_none() => w.next_seq(),
            _ => return Ok(true),
        };
        let sql = self.state.storage().sql();
        let Some(below) = wallet_store::legacy_entries_below(&sql, next_seq)? else {
            return Ok(true);
        };
        let db = ledger_shards::shard(&self.env, LEGACY_LEDGER_SHARD)?;
        let entries = ledger_shards::entries_below(&db, org_id, below, PAGE).await?;
        let done = entries.len() < PAGE as usize;
        let written = wallet_store::restore_legacy_entries(&sql, &entries, done)?;
        add(&self.replica.do_rows_written, written);
        console_log!(
            "restored {} earlier ledger entries of {org_id} from D1{}",
            entries.len(),
            if done {
                "; its history is complete"
            } else {
                ""
            }
        );
        Ok(done)
    }

    /// Sends the entries past the watermark to the shard, in batches bounded
    /// in entries and bytes. `Ok(true)`: nothing is left; `Ok(false)`: this
    /// alarm's share is done and more remains.
    pub(super) async fn flush(&self, org_id: &str, shard_name: &str) -> Result<bool> {
        let sql = self.state.storage().sql();
        let db = ledger_shards::shard(&self.env, shard_name)?;
        let mut from = match self.replica.watermark.get() {
            Some(seq) => seq,
            None => ledger_shards::progress(&db, org_id).await?,
        };
        self.replica.watermark.set(Some(from));
        for _ in 0..FLUSH_MAX_BATCHES {
            // A shard behind the archive (a refill) gets those from R2.
            let mut entries = self.archived_outbox(from, FLUSH_MAX_ENTRIES).await?;
            if entries.is_empty() {
                entries = wallet_store::outbox(&sql, from, FLUSH_MAX_ENTRIES)?;
            }
            if entries.is_empty() {
                return Ok(true);
            }
            let mut count = entries.len();
            let (batch, params) = loop {
                let batch = replica_batch(&entries[..count]).map_err(Error::RustError)?;
                let params = ledger_shards::batch_params(&batch);
                let model_bytes = params.2.as_ref().map_or(0, String::len);
                if params.0.len() + params.1.len() + model_bytes <= FLUSH_MAX_BYTES {
                    break (batch, params);
                }
                if count == 1 {
                    return Err(Error::RustError(format!(
                        "entry {} alone exceeds the {FLUSH_MAX_BYTES}-byte batch limit",
                        entries[0].id
                    )));
                }
                count /= 2;
            };
            let through = entries[count - 1].seq;
            let sent = ledger_shards::send(&db, org_id, from, through, &params).await?;
            add(&self.replica.d1_batches, 1);
            add(&self.replica.d1_rows_written, sent.d1_rows_written);
            from = if sent.applied {
                debug_assert_eq!(batch.entries as usize, count);
                through
            } else if sent.shard_seq != from {
                // The shard was restored, emptied or is ahead of what this
                // object recorded: continue from where it really stands.
                console_log!(
                    "shard {shard_name} holds {org_id} through seq {}, not {from}; replicating from there",
                    sent.shard_seq
                );
                sent.shard_seq
            } else {
                return Err(Error::RustError(format!(
                    "shard {shard_name} did not apply a batch for {org_id} at seq {from}"
                )));
            };
            self.replica.watermark.set(Some(from));
        }
        Ok(false)
    }

    /// Has the next alarm, due now, read the shard's watermark and send
    /// whatever it lacks.
    pub(super) fn refill_shard(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Reply> {
        let Some((_, shard)) = self.replica_target() else {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        };
        self.replica.watermark.set(None);
        self.replica.failures.set(0);
        self.set_alarm(0.0);
        Ok(Reply::json(
            202,
            &serde_json::json!({ "ledger_shard": shard, "status": "scheduled" }),
        ))
    }
}
