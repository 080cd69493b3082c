//! Pages of the object's own tables (ledger, audit trail, events), read
//! without a decision: exact, since they are the system of record.

use super::*;

impl Instance {
    /// A page of one of the object's tables (`wallet_store` reads it); 404
    /// when the organization has no wallet.
    pub(super) fn read(&self, query: &Query, now: chrono::DateTime<chrono::Utc>) -> Result<Reply> {
        self.ensure_loaded()?;
        let Some(next_seq) = self.wallet.borrow().as_ref().map(Wallet::next_seq) else {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        };
        let sql = self.state.storage().sql();
        let page = match query {
            Query::Ledger(query) => {
                return Ok(Reply::text(
                    200,
                    wallet_store::ledger_page(&sql, query, next_seq)?,
                ))
            }
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
