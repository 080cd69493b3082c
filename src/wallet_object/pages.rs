//! Pages of the object's own tables (ledger, audit trail, events), read
//! without a decision.

use super::*;

impl Instance {
    /// A page of the object's own tables.
    pub(super) fn read(&self, query: &Query, now: chrono::DateTime<chrono::Utc>) -> Result<Reply> {
        self.ensure_loaded()?;
        let sql = self.state.storage().sql();
        match query {
            Query::Ledger(query) => self.ledger(&sql, query, now),
            Query::Audit(query) => self.audit(&sql, query, now),
            Query::Events(query) => self.events(&sql, query, now),
        }
    }

    /// A page of events, newest first, with their delivery.
    pub(super) fn events(
        &self,
        sql: &SqlStorage,
        query: &wallet_core::events::EventsQuery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        if self.wallet.borrow().is_none() {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        }
        let (events, has_more) = wallet_store::events_page(sql, query)?;
        Ok(Reply::json(
            200,
            &serde_json::json!({ "data": events, "has_more": has_more }),
        ))
    }

    /// A page of the audit trail: `{"records": [[seq, record], …], "has_more": …}`.
    pub(super) fn audit(
        &self,
        sql: &SqlStorage,
        query: &wallet_core::audit::AuditQuery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        if self.wallet.borrow().is_none() {
            return Ok(Reply::error(&ApiError::WalletNotFound, now));
        }
        let (records, has_more) = wallet_store::audit_page(sql, query)?;
        Ok(Reply::json(
            200,
            &serde_json::json!({ "records": records, "has_more": has_more }),
        ))
    }

    /// A ledger page from this object's own entries: exact, read-only.
    pub(super) fn ledger(
        &self,
        sql: &SqlStorage,
        query: &LedgerQuery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        let next_seq = match self.wallet.borrow().as_ref() {
            None => return Ok(Reply::error(&ApiError::WalletNotFound, now)),
            Some(wallet) => wallet.next_seq(),
        };
        Ok(Reply {
            status: 200,
            body: wallet_store::ledger_page(sql, query, next_seq)?,
            retry_after: None,
        })
    }
}
