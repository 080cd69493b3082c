//! The ledger's sealed segments (SPEC §11): what an organization's oldest
//! entries become when they leave its Durable Object for R2.
//!
//! Format (`.ndjson.gz`): a gzip stream of the entries' stored JSON texts,
//! oldest first, one per line, each ended by `\n`. The texts are kept byte
//! for byte, so a ledger page read from a segment is the page read before
//! archiving. A segment is known by its [`Checkpoint`]: its seq range,
//! counts, credits in and out, the balance at its end, the SHA-256 and
//! length of its bytes, and its blocks.
//!
//! Gzip itself is not done here: the Worker uses the runtime's own engine
//! (`CompressionStream`, `src/gzip.rs`), which keeps a compressor out of the
//! wasm. Sealing is two steps around it: [`lay_out`] checks the entries and
//! gives each block's text, the shell compresses each into one gzip member,
//! and [`Unsealed::seal`] joins the members and records where each begins.
//! Reading is the reverse: the shell decompresses what it read, and
//! [`open_block`] checks the text against the checkpoint.
//!
//! Blocks: the stream is a series of gzip members of [`BLOCK_ENTRIES`]
//! entries each (concatenated members are one gzip stream to any reader),
//! and the checkpoint records where each begins, so a ledger page reads one
//! block with a ranged read instead of the whole segment. A block is checked
//! by its member's CRC-32 and length and by its entries' seqs; the whole
//! segment by its SHA-256 when sealed and by `scripts/verify-archive.mjs`.

use crate::ledger::EntryRow;
use crate::money::Credits;
use crate::paging::{list_limit, Invalid};
use crate::time::{from_millis, rfc3339};
use crate::wallet::EntryKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The segment format's file extension, part of every key.
pub const SEGMENT_EXTENSION: &str = "ndjson.gz";

/// Most bytes one segment may decode to: far more than the largest segment
/// the settings allow (1,000,000 entries of ~0.5 KB), so a corrupt or
/// hostile object cannot exhaust memory.
const MAX_DECODED_BYTES: u64 = 2 << 30;

/// Most bytes one block may decode to: its entries are each far below 64 KiB.
const MAX_BLOCK_DECODED_BYTES: u64 = BLOCK_ENTRIES as u64 * 64 * 1024;

/// The gzip header's first three bytes: magic and deflate.
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 8];

/// Entries per block of a segment.
pub const BLOCK_ENTRIES: usize = 500;

/// Where a block of a segment begins: its first entry and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub first_seq: u64,
    pub first_at_ms: i64,
    pub offset: u64,
}

/// A block's bytes and bounds, for one read. `last_seq` and `last_at_ms`
/// are upper bounds (the next block's first), except for the last block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpan {
    pub offset: u64,
    pub length: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    /// The whole segment (one sealed before blocks): checked by its SHA-256.
    pub whole: bool,
}

impl BlockSpan {
    /// Most bytes its gzip may decompress to, so a corrupt or hostile
    /// object cannot exhaust memory.
    pub fn decoded_limit_bytes(&self) -> u64 {
        if self.whole {
            MAX_DECODED_BYTES
        } else {
            MAX_BLOCK_DECODED_BYTES
        }
    }
}

/// One sealed segment's record, kept by the object (and listed by
/// `GET …/ledger/segments`). Credits are minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub first_seq: u64,
    pub last_seq: u64,
    pub entries: u64,
    pub credits_added: i64,
    pub credits_removed: i64,
    pub balance_after: i64,
    /// The oldest and newest entry's time: a `from`/`to` range finds its
    /// segments without opening the others.
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    /// SHA-256 of the segment's bytes, lowercase hex.
    pub sha256: String,
    pub bytes: u64,
    pub archived_at_ms: i64,
    /// Oldest first; empty for a segment sealed before blocks.
    #[serde(default)]
    pub blocks: Vec<Block>,
}

impl Checkpoint {
    /// The segment's blocks as byte ranges with their bounds, oldest first.
    pub fn spans(&self) -> Vec<BlockSpan> {
        if self.blocks.is_empty() {
            return vec![BlockSpan {
                offset: 0,
                length: self.bytes,
                first_seq: self.first_seq,
                last_seq: self.last_seq,
                first_at_ms: self.first_at_ms,
                last_at_ms: self.last_at_ms,
                whole: true,
            }];
        }
        let ends = self.blocks.iter().skip(1).map(|next| {
            (
                next.offset,
                next.first_seq.saturating_sub(1),
                next.first_at_ms,
            )
        });
        let last = (self.bytes, self.last_seq, self.last_at_ms);
        self.blocks
            .iter()
            .zip(ends.chain(std::iter::once(last)))
            .map(|(b, (end, last_seq, last_at_ms))| BlockSpan {
                offset: b.offset,
                length: end.saturating_sub(b.offset),
                first_seq: b.first_seq,
                last_seq,
                first_at_ms: b.first_at_ms,
                last_at_ms,
                whole: false,
            })
            .collect()
    }

    /// The segment as `GET …/ledger/segments` lists it.
    pub fn to_json(&self, org_id: &str) -> serde_json::Value {
        let at = |ms: i64| from_millis(ms).map(rfc3339);
        serde_json::json!({
            "id": format!("seg_{}", self.first_seq),
            "key": segment_key(org_id, self.first_seq, self.last_seq),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "entries": self.entries,
            "credits_added": Credits::from_units(self.credits_added),
            "credits_removed": Credits::from_units(self.credits_removed),
            "balance_after": Credits::from_units(self.balance_after),
            "first_at": at(self.first_at_ms),
            "last_at": at(self.last_at_ms),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "archived_at": at(self.archived_at_ms),
        })
    }
}

/// `GET …/ledger/segments`: oldest first, `limit`/`starting_after` (a
/// segment id, `seg_{first_seq}`) as every list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentsQuery {
    pub limit: u32,
    pub after_first_seq: Option<u64>,
}

pub fn segments_query(
    limit: Option<&str>,
    starting_after: Option<&str>,
) -> Result<SegmentsQuery, Invalid> {
    let limit = list_limit(limit)?;
    let after_first_seq = starting_after
        .map(|id| {
            id.strip_prefix("seg_")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| Invalid::new("starting_after", "must be a segment id (seg_…)"))
        })
        .transpose()?;
    Ok(SegmentsQuery {
        limit,
        after_first_seq,
    })
}

/// The shares of `OBJECT_BYTES_BUDGET` at which `wallet.storage_high` fires.
pub const STORAGE_ALERT_PERCENTS: [u8; 2] = [50, 80];
/// Below this share the alerts are re-armed (archiving caught up).
const STORAGE_REARM_PERCENT: u64 = 40;

/// The storage watch: from the object's bytes, its budget and the highest
/// level already announced, the levels to announce now (each passed for the
/// first time, lowest first, with the event's data) and the level to record.
pub fn storage_alerts(
    object_bytes: u64,
    budget_bytes: u64,
    alerted_percent: u8,
) -> (Vec<serde_json::Value>, u8) {
    let share = |percent: u64| budget_bytes.saturating_mul(percent) / 100;
    if object_bytes < share(STORAGE_REARM_PERCENT) {
        return (Vec::new(), 0);
    }
    let due: Vec<u8> = STORAGE_ALERT_PERCENTS
        .into_iter()
        .filter(|p| *p > alerted_percent && object_bytes >= share(u64::from(*p)))
        .collect();
    let level = due.last().copied().unwrap_or(alerted_percent);
    let events = due
        .into_iter()
        .map(|percent| {
            serde_json::json!({
                "percent": percent,
                "object_bytes": object_bytes,
                "object_bytes_budget": budget_bytes,
            })
        })
        .collect();
    (events, level)
}

/// The object key of a segment: `ledger/{org}/{first_seq}-{last_seq}.ndjson.gz`.
pub fn segment_key(org_id: &str, first_seq: u64, last_seq: u64) -> String {
    format!("ledger/{org_id}/{first_seq}-{last_seq}.{SEGMENT_EXTENSION}")
}

/// A segment ready to be put: its bytes and its checkpoint.
#[derive(Debug)]
pub struct Sealed {
    pub bytes: Vec<u8>,
    pub checkpoint: Checkpoint,
}

/// A segment checked and cut into blocks, waiting for each block's text to
/// be compressed: its checkpoint lacks the bytes' length, SHA-256 and the
/// blocks' offsets until [`Unsealed::seal`].
#[derive(Debug)]
pub struct Unsealed {
    checkpoint: Checkpoint,
    texts: Vec<Vec<u8>>,
}

impl Unsealed {
    /// Each block's text, oldest first: its entries, each ended by `\n`.
    pub fn block_texts(&self) -> &[Vec<u8>] {
        &self.texts
    }

    /// The segment made of `members`, each the gzip member of the block
    /// text at the same position.
    pub fn seal(self, members: Vec<Vec<u8>>) -> Result<Sealed, String> {
        if members.len() != self.texts.len() {
            return Err(format!(
                "{} blocks were compressed into {} members",
                self.texts.len(),
                members.len()
            ));
        }
        if let Some(i) = members.iter().position(|m| !m.starts_with(&GZIP_MAGIC)) {
            return Err(format!("block {i} is not a gzip member"));
        }
        let mut checkpoint = self.checkpoint;
        let mut bytes = Vec::with_capacity(members.iter().map(Vec::len).sum());
        for (block, member) in checkpoint.blocks.iter_mut().zip(&members) {
            block.offset = bytes.len() as u64;
            bytes.extend_from_slice(member);
        }
        checkpoint.sha256 = sha256_hex(&bytes);
        checkpoint.bytes = bytes.len() as u64;
        Ok(Sealed { bytes, checkpoint })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lays `rows` (oldest first) out as blocks of their JSON texts: refuses an
/// empty range, an unknown kind, seqs out of order and a balance chain with
/// a gap (each entry's `balance_after` is the previous one's plus its effect).
pub fn lay_out(rows: &[EntryRow], archived_at_ms: i64) -> Result<Unsealed, String> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err("a segment holds at least one entry".into());
    };
    let (mut added, mut removed) = (0i64, 0i64);
    let mut previous: Option<&EntryRow> = None;
    for row in rows {
        let effect = signed_effect(row)?;
        if let Some(prev) = previous {
            if row.seq <= prev.seq {
                return Err(format!("entry {} is out of order", row.seq));
            }
            if prev.balance_after.checked_add(effect) != Some(row.balance_after) {
                return Err(format!("the balance chain breaks at entry {}", row.seq));
            }
        }
        if effect >= 0 {
            added += effect;
        } else {
            removed -= effect;
        }
        previous = Some(row);
    }
    let (texts, blocks) = block_texts(rows);
    Ok(Unsealed {
        checkpoint: Checkpoint {
            first_seq: first.seq,
            last_seq: last.seq,
            entries: rows.len() as u64,
            credits_added: added,
            credits_removed: removed,
            balance_after: last.balance_after,
            first_at_ms: first.created_at_ms,
            last_at_ms: last.created_at_ms,
            sha256: String::new(),
            bytes: 0,
            archived_at_ms,
            blocks,
        },
        texts,
    })
}

/// An entry's signed effect on the balance, by its kind.
pub fn signed_effect(row: &EntryRow) -> Result<i64, String> {
    let kind =
        EntryKind::parse(&row.kind).ok_or_else(|| format!("entry {} has a bad kind", row.seq))?;
    Ok(kind.signed(row.amount))
}

/// Each block's text and where it begins (offsets are set when sealed).
fn block_texts(rows: &[EntryRow]) -> (Vec<Vec<u8>>, Vec<Block>) {
    rows.chunks(BLOCK_ENTRIES)
        .map(|chunk| {
            let mut text = Vec::new();
            for row in chunk {
                serde_json::to_writer(&mut text, row).expect("entries serialize");
                text.push(b'\n');
            }
            let block = Block {
                first_seq: chunk[0].seq,
                first_at_ms: chunk[0].created_at_ms,
                offset: 0,
            };
            (text, block)
        })
        .unzip()
}

/// The entry texts of one block, from its bytes (a ranged read of `span`)
/// and their decompressed `text`, checked against it: a whole segment
/// against its checkpoint (SHA-256 included), a block by its length, entry
/// count and seqs (its gzip CRC-32 and length were checked decompressing).
pub fn open_block(
    bytes: &[u8],
    text: Vec<u8>,
    span: &BlockSpan,
    checkpoint: &Checkpoint,
) -> Result<Vec<String>, String> {
    if span.whole {
        return open(bytes, text, checkpoint);
    }
    let texts = texts_of(text)?;
    let seqs = positions(&texts)?;
    let fits = bytes.len() as u64 == span.length
        && texts.len() <= BLOCK_ENTRIES
        && seqs.first().map(|p| p.0) == Some(span.first_seq)
        && seqs.iter().all(|p| p.0 <= span.last_seq)
        && seqs.windows(2).all(|w| w[0].0 < w[1].0);
    if !fits {
        return Err(format!(
            "block {} of segment {}-{} does not hold the entries of its checkpoint",
            span.first_seq, checkpoint.first_seq, checkpoint.last_seq
        ));
    }
    Ok(texts)
}

/// Whether `bytes` are the segment sealed with `checkpoint`: its length and
/// SHA-256. Bytes read back after a put are confirmed this way: the same
/// bytes decode to what was sealed.
pub fn confirm(bytes: &[u8], checkpoint: &Checkpoint) -> Result<(), String> {
    if bytes.len() as u64 != checkpoint.bytes || sha256_hex(bytes) != checkpoint.sha256 {
        return Err(format!(
            "segment {}-{} does not match its checksum",
            checkpoint.first_seq, checkpoint.last_seq
        ));
    }
    Ok(())
}

/// The entry texts of a whole segment, checked against its checkpoint:
/// length, SHA-256, entry count and seq range. Any difference is an error.
fn open(bytes: &[u8], text: Vec<u8>, checkpoint: &Checkpoint) -> Result<Vec<String>, String> {
    confirm(bytes, checkpoint)?;
    let texts = texts_of(text)?;
    let seq_of = |text: &String| {
        serde_json::from_str::<EntryRow>(text)
            .map(|r| r.seq)
            .map_err(|e| format!("unreadable entry: {e}"))
    };
    let first = texts.first().map(seq_of).transpose()?;
    let last = texts.last().map(seq_of).transpose()?;
    if texts.len() as u64 != checkpoint.entries
        || first != Some(checkpoint.first_seq)
        || last != Some(checkpoint.last_seq)
    {
        return Err(format!(
            "segment {}-{} does not hold the entries of its checkpoint",
            checkpoint.first_seq, checkpoint.last_seq
        ));
    }
    Ok(texts)
}

/// The entry texts of a segment's (or block's) decompressed text.
pub fn texts_of(text: Vec<u8>) -> Result<Vec<String>, String> {
    let text = String::from_utf8(text).map_err(|_| "segment is not UTF-8 text".to_string())?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err("segment is empty or truncated".into());
    };
    Ok(body.split('\n').map(str::to_string).collect())
}

/// The entries of `texts` (a segment, oldest first) within the seq range
/// `[from_seq, below_seq)` and the time range `[from_ms, to_ms)`, newest
/// first, at most `limit`.
pub fn newest_within<'a>(
    texts: &'a [String],
    rows: &[(u64, i64)],
    range: &EntryRange,
    limit: usize,
) -> Vec<&'a str> {
    rows.iter()
        .zip(texts)
        .rev()
        .filter(|((seq, at_ms), _)| range.holds(*seq, *at_ms))
        .take(limit)
        .map(|(_, text)| text.as_str())
        .collect()
}

/// A page's bounds: seqs `[from_seq, below_seq)`, times `[from_ms, to_ms)`.
#[derive(Clone, Copy, Debug)]
pub struct EntryRange {
    pub from_seq: u64,
    pub below_seq: u64,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl EntryRange {
    pub fn holds(&self, seq: u64, at_ms: i64) -> bool {
        seq >= self.from_seq && seq < self.below_seq && at_ms >= self.from_ms && at_ms < self.to_ms
    }

    /// Whether a segment may hold entries of this range.
    pub fn meets(&self, c: &Checkpoint) -> bool {
        self.meets_bounds(c.first_seq, c.last_seq, c.first_at_ms, c.last_at_ms)
    }

    /// Whether a block may hold entries of this range.
    pub fn meets_block(&self, b: &BlockSpan) -> bool {
        self.meets_bounds(b.first_seq, b.last_seq, b.first_at_ms, b.last_at_ms)
    }

    fn meets_bounds(&self, first_seq: u64, last_seq: u64, first_ms: i64, last_ms: i64) -> bool {
        first_seq < self.below_seq
            && last_seq >= self.from_seq
            && first_ms < self.to_ms
            && last_ms >= self.from_ms
    }
}

/// `(seq, created_at_ms)` of each entry text, in order.
pub fn positions(texts: &[String]) -> Result<Vec<(u64, i64)>, String> {
    #[derive(Deserialize)]
    struct Position {
        seq: u64,
        created_at_ms: i64,
    }
    texts
        .iter()
        .map(|t| {
            serde_json::from_str::<Position>(t)
                .map(|p| (p.seq, p.created_at_ms))
                .map_err(|e| format!("unreadable entry: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Read, Write};

    /// One gzip member, as the runtime's `CompressionStream` writes it.
    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap()
    }

    /// Every member's text, CRC-32 and length checked (as the Worker's
    /// `DecompressionStream` does).
    fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut text)
            .map_err(|e| format!("not gzip: {e}"))?;
        Ok(text)
    }

    /// Both steps of sealing, each block compressed on its own.
    fn seal(rows: &[EntryRow], archived_at_ms: i64) -> Result<Sealed, String> {
        let unsealed = lay_out(rows, archived_at_ms)?;
        let members = unsealed.block_texts().iter().map(|t| gzip(t)).collect();
        unsealed.seal(members)
    }

    fn decode(bytes: &[u8]) -> Result<Vec<String>, String> {
        texts_of(gunzip(bytes)?)
    }

    fn open(bytes: &[u8], checkpoint: &Checkpoint) -> Result<Vec<String>, String> {
        super::open(bytes, gunzip(bytes)?, checkpoint)
    }

    /// A block read as the Worker reads it: decompressed, then checked.
    fn read_block(
        bytes: &[u8],
        span: &BlockSpan,
        checkpoint: &Checkpoint,
    ) -> Result<Vec<String>, String> {
        open_block(bytes, gunzip(bytes)?, span, checkpoint)
    }

    fn parsed(texts: &[String]) -> Vec<EntryRow> {
        texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }

    /// A chain of entries of every kind, with every optional field set on
    /// some of them (priced usage and unbilled included).
    fn chain(start_seq: u64, n: usize, opening: i64) -> Vec<String> {
        let mut balance = opening;
        (0..n)
            .map(|i| {
                let kind = EntryKind::ALL[i % EntryKind::ALL.len()];
                let amount = 10_000 + i as i64 * 7;
                balance += if kind.adds_credits() { amount } else { -amount };
                let full = i % 3 == 0;
                let row = EntryRow {
                    seq: start_seq + i as u64 * 2,
                    id: format!("e_{}", start_seq + i as u64 * 2),
                    kind: kind.as_str().into(),
                    amount,
                    balance_after: balance,
                    created_at_ms: 1_900_000_000_000 + i as i64 * 1000,
                    usage_day: "2030-03-01".into(),
                    feature: full.then(|| "chat".into()),
                    user_id: full.then(|| "u_1".into()),
                    project_id: full.then(|| "p \"q\"\n".into()),
                    hold_id: full.then(|| "h_1".into()),
                    pack_id: full.then(|| "team".into()),
                    amount_cents: full.then_some(5000),
                    currency: full.then(|| "usd".into()),
                    payment_intent_id: full.then(|| "pi_1".into()),
                    purchase_id: full.then(|| "pur_1".into()),
                    source: None,
                    metadata: None,
                    model: full.then(|| "gpt-x".into()),
                    input_tokens: full.then_some(1200),
                    cached_input_tokens: full.then_some(300),
                    output_tokens: full.then_some(450),
                    rate_id: full.then(|| "rate_1".into()),
                    unbilled: full.then_some(3),
                };
                serde_json::to_string(&row).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_segment_round_trips_every_field_byte_for_byte() {
        let texts = chain(5, 40, 2_000_000);
        let sealed = seal(&parsed(&texts), 1_900_000_100_000).unwrap();
        assert_eq!(open(&sealed.bytes, &sealed.checkpoint).unwrap(), texts);
        let rows: Vec<EntryRow> = texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let again: Vec<EntryRow> = decode(&sealed.bytes)
            .unwrap()
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert_eq!(again, rows);
        assert!(rows[0].model.is_some() && rows[0].unbilled == Some(3));
        let c = &sealed.checkpoint;
        assert_eq!((c.first_seq, c.last_seq, c.entries), (5, 5 + 39 * 2, 40));
        assert_eq!(c.balance_after, rows[39].balance_after);
        // Every entry's effect is counted, the first one's too.
        assert_eq!(
            c.credits_added - c.credits_removed,
            rows[39].balance_after - 2_000_000
        );
        assert_eq!(c.sha256, sha256_hex(&sealed.bytes));
        assert_eq!(c.bytes, sealed.bytes.len() as u64);
        assert!(sealed.bytes.len() < texts.iter().map(String::len).sum::<usize>() / 3);
    }

    #[test]
    fn sealing_is_deterministic_and_gzip_readable() {
        let texts = chain(1, 25, 0);
        let a = seal(&parsed(&texts), 1).unwrap();
        let b = seal(&parsed(&texts), 2).unwrap();
        assert_eq!(a.bytes, b.bytes, "a repeated put writes the same bytes");
        assert_eq!(a.checkpoint.sha256, b.checkpoint.sha256);
        assert_eq!(&a.bytes[..3], &[0x1f, 0x8b, 8], "gzip, deflate");
        assert_eq!(&a.bytes[4..8], &[0, 0, 0, 0], "mtime 0");
    }

    #[test]
    fn an_altered_segment_is_refused() {
        let texts = chain(1, 10, 0);
        let sealed = seal(&parsed(&texts), 1).unwrap();
        let mut bad = sealed.bytes.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 1;
        assert!(open(&bad, &sealed.checkpoint).is_err());
        assert!(open(&sealed.bytes[..sealed.bytes.len() - 1], &sealed.checkpoint).is_err());
        let mut other = sealed.checkpoint.clone();
        other.entries += 1;
        assert!(open(&sealed.bytes, &other).is_err(), "count differs");
        let mut shifted = sealed.checkpoint.clone();
        shifted.first_seq += 1;
        assert!(open(&sealed.bytes, &shifted).is_err(), "range differs");
    }

    #[test]
    fn empty_ranges_and_broken_chains_are_not_sealed() {
        assert!(seal(&[], 1).is_err());
        let mut texts = chain(1, 5, 0);
        let mut row: EntryRow = serde_json::from_str(&texts[3]).unwrap();
        row.balance_after += 1;
        texts[3] = serde_json::to_string(&row).unwrap();
        assert!(seal(&parsed(&texts), 1).unwrap_err().contains("chain"));
        let mut swapped = chain(1, 5, 0);
        swapped.swap(1, 2);
        assert!(seal(&parsed(&swapped), 1).is_err());
        assert!(decode(b"").is_err());
        assert!(texts_of(Vec::new()).is_err());
        assert!(texts_of(b"{\"seq\":1}".to_vec()).is_err(), "truncated");
        assert!(texts_of(vec![0xff, b'\n']).is_err(), "not UTF-8");
    }

    #[test]
    fn sealing_takes_one_gzip_member_per_block() {
        let rows = parsed(&chain(1, BLOCK_ENTRIES + 1, 0));
        let unsealed = lay_out(&rows, 1).unwrap();
        let texts = unsealed.block_texts().to_vec();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[1].iter().filter(|b| **b == b'\n').count(), 1);
        let members: Vec<Vec<u8>> = texts.iter().map(|t| gzip(t)).collect();
        let fewer = lay_out(&rows, 1).unwrap().seal(members[..1].to_vec());
        assert!(fewer.unwrap_err().contains("2 blocks"));
        let plain = lay_out(&rows, 1).unwrap().seal(texts.clone());
        assert!(plain.unwrap_err().contains("not a gzip member"));
        let sealed = unsealed.seal(members.clone()).unwrap();
        let c = &sealed.checkpoint;
        assert_eq!(c.blocks[1].offset, members[0].len() as u64);
        assert_eq!(c.bytes, (members[0].len() + members[1].len()) as u64);
        assert_eq!(
            sealed.bytes,
            [members[0].clone(), members[1].clone()].concat()
        );
    }

    #[test]
    fn a_single_entry_is_a_segment() {
        let texts = chain(9, 1, 100);
        let sealed = seal(&parsed(&texts), 1).unwrap();
        assert_eq!(
            (sealed.checkpoint.first_seq, sealed.checkpoint.last_seq),
            (9, 9)
        );
        assert_eq!(open(&sealed.bytes, &sealed.checkpoint).unwrap(), texts);
    }

    #[test]
    fn segment_lists_take_their_own_cursor() {
        let q = segments_query(Some("2"), Some("seg_501")).unwrap();
        assert_eq!((q.limit, q.after_first_seq), (2, Some(501)));
        assert_eq!(segments_query(None, None).unwrap().after_first_seq, None);
        for bad in ["le_5", "seg_", "seg_x", "501"] {
            assert!(segments_query(None, Some(bad)).is_err(), "{bad}");
        }
        assert!(segments_query(Some("0"), None).is_err());
        let sealed = seal(&parsed(&chain(1, 3, 0)), 1_900_000_000_000).unwrap();
        let view = sealed.checkpoint.to_json("org_1");
        assert_eq!(view["id"], "seg_1");
        assert_eq!(view["key"], "ledger/org_1/1-5.ndjson.gz");
        assert_eq!(view["archived_at"], "2030-03-17T17:46:40.000Z");
    }

    #[test]
    fn storage_alerts_fire_once_per_level_and_rearm_when_low() {
        let levels = |events: &[serde_json::Value]| -> Vec<u64> {
            events
                .iter()
                .map(|e| e["percent"].as_u64().unwrap())
                .collect()
        };
        let (events, level) = storage_alerts(499, 1000, 0);
        assert!(events.is_empty());
        assert_eq!(level, 0);
        let (events, level) = storage_alerts(500, 1000, 0);
        assert_eq!((levels(&events), level), (vec![50], 50));
        assert_eq!(events[0]["object_bytes_budget"], 1000);
        let (events, level) = storage_alerts(790, 1000, 50);
        assert_eq!((levels(&events), level), (vec![], 50), "once per level");
        let (events, level) = storage_alerts(800, 1000, 50);
        assert_eq!((levels(&events), level), (vec![80], 80));
        let (events, level) = storage_alerts(5000, 1000, 80);
        assert_eq!((levels(&events), level), (vec![], 80));
        let (events, level) = storage_alerts(900, 1000, 0);
        assert_eq!(
            (levels(&events), level),
            (vec![50, 80], 80),
            "both, lowest first"
        );
        assert_eq!(
            storage_alerts(450, 1000, 80).1,
            80,
            "not re-armed above 40%"
        );
        assert_eq!(storage_alerts(399, 1000, 80).1, 0, "re-armed below 40%");
    }

    /// The bytes of one block, as a ranged read gets them.
    fn block_bytes<'a>(bytes: &'a [u8], span: &BlockSpan) -> &'a [u8] {
        &bytes[span.offset as usize..(span.offset + span.length) as usize]
    }

    #[test]
    fn a_segment_is_blocks_each_readable_alone() {
        let n = BLOCK_ENTRIES * 2 + 37;
        let texts = chain(3, n, 0);
        let sealed = seal(&parsed(&texts), 1).unwrap();
        let c = &sealed.checkpoint;
        let spans = c.spans();
        assert_eq!(spans.len(), 3);
        // Contiguous, covering every byte; one gzip stream as a whole.
        assert_eq!(spans[0].offset, 0);
        for pair in spans.windows(2) {
            assert_eq!(pair[0].offset + pair[0].length, pair[1].offset);
            assert!(pair[0].last_seq < pair[1].first_seq);
        }
        assert_eq!(spans[2].offset + spans[2].length, c.bytes);
        assert_eq!(
            (spans[2].last_seq, spans[2].last_at_ms),
            (c.last_seq, c.last_at_ms)
        );
        assert_eq!(decode(&sealed.bytes).unwrap(), texts);
        for (i, span) in spans.iter().enumerate() {
            let block = read_block(block_bytes(&sealed.bytes, span), span, c).unwrap();
            let expected: Vec<String> = texts.chunks(BLOCK_ENTRIES).nth(i).unwrap().to_vec();
            assert_eq!(block, expected, "block {i}");
            assert_eq!(&block_bytes(&sealed.bytes, span)[..3], &[0x1f, 0x8b, 8]);
        }
        // A changed byte fails the member's CRC; a block under another span is refused.
        let mut bad = sealed.bytes.clone();
        bad[(spans[1].offset + spans[1].length / 2) as usize] ^= 1;
        assert!(read_block(block_bytes(&bad, &spans[1]), &spans[1], c).is_err());
        assert!(read_block(block_bytes(&sealed.bytes, &spans[1]), &spans[0], c).is_err());
        let mut shorter = spans[1];
        shorter.length -= 1;
        assert!(read_block(block_bytes(&sealed.bytes, &shorter), &shorter, c).is_err());
        // A checkpoint sealed before blocks is read whole, by its SHA-256.
        let old = Checkpoint {
            blocks: Vec::new(),
            ..c.clone()
        };
        let whole = old.spans();
        assert_eq!(whole.len(), 1);
        assert!(whole[0].whole && whole[0].length == c.bytes);
        // A block decodes to far less than a whole segment may.
        let block_text = gunzip(block_bytes(&sealed.bytes, &spans[0])).unwrap();
        assert!(block_text.len() as u64 <= spans[0].decoded_limit_bytes());
        assert!(spans[0].decoded_limit_bytes() < whole[0].decoded_limit_bytes());
        assert_eq!(read_block(&sealed.bytes, &whole[0], &old).unwrap(), texts);
        assert!(read_block(&bad, &whole[0], &old).is_err());
    }

    #[test]
    fn a_block_text_is_checked_against_its_span_each_way() {
        let texts = chain(3, BLOCK_ENTRIES + 2, 0);
        let sealed = seal(&parsed(&texts), 1).unwrap();
        let c = &sealed.checkpoint;
        let span = c.spans()[0];
        let bytes = block_bytes(&sealed.bytes, &span);
        let lines = |texts: &[String]| {
            texts
                .iter()
                .flat_map(|t| [t.as_bytes(), b"\n"].concat())
                .collect::<Vec<u8>>()
        };
        let own = &texts[..BLOCK_ENTRIES];
        assert_eq!(open_block(bytes, lines(own), &span, c).unwrap(), own);
        // Each check alone refuses: the bytes' length, the entry count, the
        // first seq, a seq past the span, seqs out of order.
        let longer = [bytes, &[0]].concat();
        assert!(open_block(&longer, lines(own), &span, c).is_err(), "length");
        let wide = BlockSpan {
            last_seq: u64::MAX,
            ..span
        };
        let too_many = &texts[..BLOCK_ENTRIES + 1];
        assert!(
            open_block(bytes, lines(too_many), &wide, c).is_err(),
            "count"
        );
        assert!(
            open_block(bytes, lines(&texts[1..=BLOCK_ENTRIES]), &wide, c).is_err(),
            "first"
        );
        let past = BlockSpan {
            last_seq: span.last_seq - 3,
            ..span
        };
        assert!(
            open_block(bytes, lines(own), &past, c).is_err(),
            "past the span"
        );
        let mut swapped = own.to_vec();
        swapped.swap(1, 2);
        assert!(
            open_block(bytes, lines(&swapped), &span, c).is_err(),
            "order"
        );
        let mut repeated = own.to_vec();
        repeated[2] = repeated[1].clone();
        assert!(
            open_block(bytes, lines(&repeated), &span, c).is_err(),
            "a seq twice"
        );
    }

    #[test]
    fn credits_in_and_out_are_counted_apart() {
        let texts = chain(1, 30, 1_000_000);
        let rows = parsed(&texts);
        let sealed = seal(&rows, 1).unwrap();
        let sum = |adding: bool| -> i64 {
            rows.iter()
                .filter(|r| EntryKind::parse(&r.kind).unwrap().adds_credits() == adding)
                .map(|r| r.amount)
                .sum()
        };
        assert!(sum(true) > 0 && sum(false) > 0);
        assert_eq!(sealed.checkpoint.credits_added, sum(true));
        assert_eq!(sealed.checkpoint.credits_removed, sum(false));
    }

    #[test]
    fn keys_name_the_org_and_range() {
        assert_eq!(segment_key("org_1", 1, 500), "ledger/org_1/1-500.ndjson.gz");
    }

    proptest! {
        /// Any range within a segment picks exactly the entries a filter
        /// over the whole list picks, newest first.
        #[test]
        fn ranges_pick_what_a_filter_over_the_entries_picks(
            n in 1usize..60,
            from_seq in 0u64..130,
            span in 0u64..130,
            from_i in 0i64..70,
            to_i in 0i64..70,
            limit in 0usize..70,
        ) {
            let texts = chain(1, n, 0);
            let sealed = seal(&parsed(&texts), 1).unwrap();
            let opened = open(&sealed.bytes, &sealed.checkpoint).unwrap();
            let rows = positions(&opened).unwrap();
            let range = EntryRange {
                from_seq,
                below_seq: from_seq + span,
                from_ms: 1_900_000_000_000 + from_i * 1000,
                to_ms: 1_900_000_000_000 + to_i * 1000,
            };
            let picked = newest_within(&opened, &rows, &range, limit);
            let expected: Vec<&str> = texts
                .iter()
                .rev()
                .filter(|t| {
                    let r: EntryRow = serde_json::from_str(t).unwrap();
                    r.seq >= from_seq && r.seq < from_seq + span
                        && r.created_at_ms >= range.from_ms && r.created_at_ms < range.to_ms
                })
                .take(limit)
                .map(String::as_str)
                .collect();
            prop_assert_eq!(&picked, &expected);
            if !expected.is_empty() {
                prop_assert!(range.meets(&sealed.checkpoint));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The blocks a range meets hold every entry of the segment in it:
        /// a page that reads only those blocks misses nothing.
        #[test]
        fn blocks_met_by_a_range_hold_all_its_entries(
            n in 1usize..1300,
            from_seq in 0u64..2700,
            span in 0u64..2700,
            from_i in 0i64..1400,
            len_i in 0i64..1400,
        ) {
            let texts = chain(1, n, 0);
            let sealed = seal(&parsed(&texts), 1).unwrap();
            let range = EntryRange {
                from_seq,
                below_seq: from_seq + span,
                from_ms: 1_900_000_000_000 + from_i * 1000,
                to_ms: 1_900_000_000_000 + (from_i + len_i) * 1000,
            };
            let spans = sealed.checkpoint.spans();
            for (seq, at_ms) in positions(&texts).unwrap() {
                if range.holds(seq, at_ms) {
                    let home = spans.iter().find(|b| b.first_seq <= seq && seq <= b.last_seq);
                    prop_assert!(home.is_some_and(|b| range.meets_block(b)), "entry {}", seq);
                }
            }
        }
    }
}
