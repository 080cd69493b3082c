//! The ledger's life past the live window (SPEC §11): the alarm seals the
//! oldest entries into immutable segments in R2 (`LEDGER_ARCHIVE`), and
//! ledger pages, ranges, CSV exports and a shard refill read them back, so
//! every read answers as if nothing had left the object.
//!
//! Sealing: read the oldest `LEDGER_SEGMENT_ENTRIES` live entries (only ones
//! the D1 shard holds already), lay them out in blocks (`wallet_core::archive`),
//! gzip each block (`crate::gzip`), put the bytes with their SHA-256, read
//! them back and check them, and only then commit, in one transaction, the
//! checkpoint and the deletion of their rows. A crash anywhere leaves the
//! rows in place; the next alarm seals the same entries again under the same
//! key, and only the checkpoint committed with them names the bytes kept.

use super::*;
use std::collections::VecDeque;
use wallet_core::archive::{self, BlockSpan, Checkpoint, EntryRange};
use wallet_core::ledger::EntryRow;
use worker::Range;

/// The R2 bucket binding of the archive.
const ARCHIVE_BINDING: &str = "LEDGER_ARCHIVE";
/// Segments sealed per alarm at most, so one alarm stays short.
const SEGMENTS_PER_ALARM: usize = 2;
/// Checkpoints looked up per step of a page that reaches into the archive.
const CHECKPOINTS_PER_STEP: u32 = 16;
/// Decoded blocks kept in memory (about 0.2 MB each): a page walk or a CSV
/// export reads the same block several times.
const OPEN_BLOCKS_KEPT: usize = 8;

/// A block of a segment read from R2 and checked against its checkpoint.
pub(super) struct OpenBlock {
    /// The segment's first seq and the block's: its name in the cache.
    segment_first_seq: u64,
    first_seq: u64,
    texts: Vec<String>,
    positions: Vec<(u64, i64)>,
}

/// What this instance remembers of the archive: the blocks it read last
/// (newest use last), and its last count of live entries.
#[derive(Default)]
pub(super) struct SegmentCache(RefCell<VecDeque<Rc<OpenBlock>>>, Cell<Option<LiveCount>>);

/// Live entries counted after `archived_through` when the next seq was
/// `next_seq`: until then, entries are at most that count plus the seqs
/// handed out since, so the alarm counts again only once those could pass
/// the window (a count reads every live row).
#[derive(Clone, Copy)]
pub(super) struct LiveCount {
    next_seq: u64,
    archived_through: u64,
    live: u64,
}

impl Instance {
    /// Seals segments while the live entries exceed the window, a few per
    /// alarm. `Ok(true)`: more wait (the alarm comes back soon).
    pub(super) async fn archive(&self, config: &wallet_core::WalletConfig) -> Result<bool> {
        for _ in 0..SEGMENTS_PER_ALARM {
            if !self.seal_one(config).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The oldest live entries past the window, if a full segment of them
    /// is due and the shard holds them; oldest first.
    fn due_segment(&self, config: &wallet_core::WalletConfig) -> Result<Option<Vec<EntryRow>>> {
        let Some((next_seq, legacy)) = self
            .wallet
            .borrow()
            .as_ref()
            .map(|w| (w.next_seq(), w.ledger_shard().is_none()))
        else {
            return Ok(None);
        };
        let sql = self.state.storage().sql();
        // An organization older than shards first gets its history back.
        if legacy && wallet_store::legacy_entries_below(&sql, next_seq)?.is_some() {
            return Ok(None);
        }
        let archived_through = wallet_store::last_checkpoint(&sql)?.map_or(0, |c| c.last_seq);
        // Entries are at most the seqs (or the last count plus the seqs
        // since): no count while those fit the window.
        let live_seqs = next_seq.saturating_sub(archived_through + 1);
        let bound = match self.segments.1.get() {
            Some(c) if c.archived_through == archived_through => {
                live_seqs.min(c.live + next_seq.saturating_sub(c.next_seq))
            }
            _ => live_seqs,
        };
        if bound <= config.ledger_live_entries {
            return Ok(None);
        }
        let live = wallet_store::live_entries(&sql, archived_through)?;
        self.segments.1.set(Some(LiveCount {
            next_seq,
            archived_through,
            live,
        }));
        if live <= config.ledger_live_entries {
            return Ok(None);
        }
        let rows =
            wallet_store::oldest_after(&sql, archived_through, config.ledger_segment_entries)?;
        // Only what the D1 shard holds: a refill reads older entries from R2
        // but never sends what was not replicated first.
        let replicated = self.replica.watermark.get().unwrap_or(0);
        let due = rows.last().is_some_and(|row| row.seq <= replicated);
        Ok(due.then_some(rows))
    }

    /// Seals the next due segment; `Ok(false)` when none is due.
    async fn seal_one(&self, config: &wallet_core::WalletConfig) -> Result<bool> {
        let Some(rows) = self.due_segment(config)? else {
            return Ok(false);
        };
        let org_id = self
            .org_id()
            .ok_or_else(|| Error::RustError("no wallet".into()))?;
        let unsealed = archive::lay_out(&rows, Date::now().as_millis() as i64)
            .map_err(|e| Error::RustError(format!("sealing the ledger of {org_id}: {e}")))?;
        let mut members = Vec::with_capacity(unsealed.block_texts().len());
        for text in unsealed.block_texts() {
            members.push(crate::gzip::compress(text).await?);
        }
        let sealed = unsealed
            .seal(members)
            .map_err(|e| Error::RustError(format!("sealing the ledger of {org_id}: {e}")))?;
        let c = &sealed.checkpoint;
        let key = archive::segment_key(&org_id, c.first_seq, c.last_seq);
        let bucket = self.env.bucket(ARCHIVE_BINDING)?;
        let digest = hex_bytes(&c.sha256);
        bucket
            .put(key.as_str(), sealed.bytes.clone())
            .sha256(digest)
            .execute()
            .await?;
        // Read back: nothing leaves the object before R2 holds it intact.
        let stored = read_object(&bucket, &key, None).await?;
        archive::confirm(&stored, c).map_err(Error::RustError)?;
        // Alarms never overlap and entries never change: the rows are still
        // the ones sealed, whatever requests ran during the awaits.
        self.commit(wallet_store::archive_statements(c))?;
        console_log!(
            "archived entries {}-{} of {org_id} to {key} ({} entries, {} bytes)",
            c.first_seq,
            c.last_seq,
            c.entries,
            c.bytes
        );
        Ok(true)
    }

    /// The storage watch, from the alarm: `wallet.storage_high` once per
    /// level passed (50% and 80% of `OBJECT_BYTES_BUDGET`), committed with
    /// the level in one transaction; and a log line while past 80%.
    pub(super) fn watch_storage(&self, config: &wallet_core::WalletConfig) -> Result<()> {
        let sql = self.state.storage().sql();
        let object_bytes = sql.database_size() as u64;
        let budget = config.object_bytes_budget;
        let alerted = wallet_store::storage_alerted(&sql)?;
        let (alerts, level) = archive::storage_alerts(object_bytes, budget, alerted);
        let Some(mut wallet) = self.wallet.borrow().clone() else {
            return Ok(());
        };
        if object_bytes.saturating_mul(100) >= budget.saturating_mul(80) {
            console_error!(
                "ledger storage of {} is at {} of {budget} bytes: archiving must catch up before it is full",
                wallet.org_id(),
                object_bytes
            );
        }
        if level == alerted {
            return Ok(());
        }
        let now = from_millis(Date::now().as_millis() as i64)
            .ok_or_else(|| Error::RustError("bad clock".into()))?;
        let writes: Vec<wallet_core::decision::Write> = alerts
            .into_iter()
            .map(|data| {
                let seq = wallet.take_event_seq();
                let event_type = wallet_core::events::EventType::StorageHigh;
                let event =
                    wallet_core::events::Event::new(wallet.org_id(), seq, event_type, now, data);
                wallet_core::decision::Write::Event(event)
            })
            .collect();
        let announced = !writes.is_empty();
        let write = (wallet, wallet_core::decision::WalletWrite::Update);
        let mut statements = wallet_store::statements(&writes, announced.then_some(&write));
        statements.push(wallet_store::set_storage_alerted(level));
        self.commit(statements)?;
        if announced {
            *self.wallet.borrow_mut() = Some(write.0);
            self.arm_alarm(0.0);
        }
        Ok(())
    }

    /// Whether the object's database is past `OBJECT_BYTES_BUDGET`.
    pub(super) fn past_budget(&self, config: &wallet_core::WalletConfig) -> bool {
        self.state.storage().sql().database_size() as u64 > config.object_bytes_budget
    }

    pub(super) fn org_id(&self) -> Option<String> {
        self.wallet
            .borrow()
            .as_ref()
            .map(|w| w.org_id().to_string())
    }

    /// Adds to `out` (a ledger page's live texts, newest first) the archived
    /// entries of `range`, newest first, until it holds `want`. The first
    /// checkpoints are read before any await, with the live rows: the page
    /// is one consistent view even if a segment is sealed meanwhile.
    pub(super) async fn archived_entries(
        &self,
        sql: &SqlStorage,
        range: &EntryRange,
        want: usize,
        out: &mut Vec<String>,
    ) -> Result<()> {
        let mut below_first_seq = u64::MAX;
        while out.len() < want {
            let batch = wallet_store::checkpoints_meeting(
                sql,
                range,
                below_first_seq,
                CHECKPOINTS_PER_STEP,
            )?;
            if batch.is_empty() {
                break;
            }
            for c in &batch {
                below_first_seq = c.first_seq;
                // Newest block first; only blocks that may hold the range are read.
                for span in c.spans().iter().rev().filter(|b| range.meets_block(b)) {
                    let block = self.open_block(c, span).await?;
                    let picked = archive::newest_within(
                        &block.texts,
                        &block.positions,
                        range,
                        want - out.len(),
                    );
                    out.extend(picked.into_iter().map(str::to_string));
                    if out.len() >= want {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` archived entries after `after_seq`, oldest first, for a
    /// shard that lacks them (a refill); empty when `after_seq` is live.
    pub(super) async fn archived_outbox(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<EntryRow>> {
        let sql = self.state.storage().sql();
        let Some(c) = wallet_store::checkpoint_after(&sql, after_seq)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for span in c.spans().iter().filter(|b| b.last_seq > after_seq) {
            let block = self.open_block(&c, span).await?;
            for (text, (seq, _)) in block.texts.iter().zip(&block.positions) {
                if *seq > after_seq && out.len() < limit {
                    out.push(serde_json::from_str::<EntryRow>(text)?);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// A block of checkpoint `c`'s segment, from memory or from R2 (a
    /// ranged read, checked).
    async fn open_block(&self, c: &Checkpoint, span: &BlockSpan) -> Result<Rc<OpenBlock>> {
        let cached = self
            .segments
            .0
            .borrow()
            .iter()
            .find(|b| b.segment_first_seq == c.first_seq && b.first_seq == span.first_seq)
            .cloned();
        if let Some(block) = cached {
            return Ok(block);
        }
        let org_id = self
            .org_id()
            .ok_or_else(|| Error::RustError("no wallet".into()))?;
        let key = archive::segment_key(&org_id, c.first_seq, c.last_seq);
        let bucket = self.env.bucket(ARCHIVE_BINDING)?;
        let bytes = read_object(&bucket, &key, (!span.whole).then_some(span)).await?;
        let text = crate::gzip::decompress(&bytes, span.decoded_limit_bytes()).await?;
        let texts = archive::open_block(&bytes, text, span, c).map_err(Error::RustError)?;
        let positions = archive::positions(&texts).map_err(Error::RustError)?;
        let block = Rc::new(OpenBlock {
            segment_first_seq: c.first_seq,
            first_seq: span.first_seq,
            texts,
            positions,
        });
        let mut kept = self.segments.0.borrow_mut();
        if kept.len() >= OPEN_BLOCKS_KEPT {
            kept.pop_front();
        }
        kept.push_back(Rc::clone(&block));
        Ok(block)
    }

    /// `GET …/ledger/segments`: checkpoints, oldest first.
    pub(super) fn segments_page(
        &self,
        query: &wallet_core::archive::SegmentsQuery,
    ) -> Result<Reply> {
        let sql = self.state.storage().sql();
        let org_id = self.org_id().unwrap_or_default();
        let (page, has_more) = wallet_store::checkpoints_page(&sql, query)?;
        let data: Vec<serde_json::Value> = page.iter().map(|c| c.to_json(&org_id)).collect();
        Ok(Reply::json(
            200,
            &serde_json::json!({ "data": data, "has_more": has_more }),
        ))
    }

    /// `GET …/ledger/storage`: what the object holds and may hold.
    pub(super) fn storage(&self) -> Result<Reply> {
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let sql = self.state.storage().sql();
        let archived_through = wallet_store::last_checkpoint(&sql)?.map_or(0, |c| c.last_seq);
        let (segments, archived_entries) = wallet_store::archive_totals(&sql)?;
        Ok(Reply::json(
            200,
            &serde_json::json!({
                "live_entries": wallet_store::live_entries(&sql, archived_through)?,
                "archived_entries": archived_entries,
                "segments": segments,
                "object_bytes": sql.database_size(),
                "object_bytes_budget": settings.config.object_bytes_budget,
            }),
        ))
    }
}

/// An object's bytes, or those of one block of it; a missing object is an error.
async fn read_object(bucket: &Bucket, key: &str, span: Option<&BlockSpan>) -> Result<Vec<u8>> {
    let mut get = bucket.get(key);
    if let Some(span) = span {
        get = get.range(Range::OffsetWithLength {
            offset: span.offset,
            length: span.length,
        });
    }
    let object = get
        .execute()
        .await?
        .ok_or_else(|| Error::RustError(format!("archive object {key} is missing")))?;
    object
        .body()
        .ok_or_else(|| Error::RustError(format!("archive object {key} has no body")))?
        .bytes()
        .await
}

/// The 32 bytes of a lowercase hex SHA-256.
fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}
