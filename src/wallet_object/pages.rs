//! Pages of the object's own tables (ledger — live and archived —, audit
//! trail, events, the ledger's segments and storage), read without a
//! decision: exact, since they are the system of record.

use super::*;

impl Instance {
    /// A page of one of the object's tables (`wallet_store` reads it); 404
    /// when the organization has no wallet.
    pub(super) async fn read(
        &self,
        query: &Query,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        self.ensure_loaded()?;
        let Some(next_seq) = self.wallet.borrow().as_ref().map(Wallet::next_seq) else {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        };
        let sql = self.state.storage().sql();
        let page = match query {
            Query::Ledger(query) => {
                let (mut texts, range) = wallet_store::ledger_live(&sql, query, next_seq)?;
                let want = query.limit as usize + 1;
                // Past the live entries, the page goes on in the archive.
                if texts.len() < want {
                    self.archived_entries(&sql, &range, want, &mut texts)
                        .await?;
                }
                return Ok(Reply::text(
                    200,
                    wallet_store::ledger_page_json(&texts, query.limit),
                ));
            }
            Query::Segments(query) => return self.segments_page(query),
            Query::Storage => return self.storage(),
            Query::Audit(query) => {
                let (records, has_more) = wallet_store::audit_page(&sql, query)?;
                serde_json::json!({ "records": records, "has_more": has_more })
            }
            Query::Events(query) => {
                let (events, has_more) = wallet_store::events_page(&sql, query)?;
                serde_json::json!({ "data": events, "has_more": has_more })
            }
        };
        Ok(Reply::json(200, &page))
    }
}
