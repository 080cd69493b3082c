//! The AI Wallet's wire and decision machine over the pure domain
//! (`wallet-domain`).
//!
//! Layers: `wallet-domain` (base ← domain) ← `api` (wire: request bodies,
//! `ApiError`, views, the route table, the Worker ⇄ object protocol) ←
//! `decision` (the machine: replay check, advance, dispatch, observe).
//! `deployment` checks a production configuration.
//!
//! Architecture Invariant: no I/O, no clock, no `worker` dependency: the
//! Durable Object shell loads state, calls in here with `now`, and persists
//! what comes back. The domain modules are re-exported under their own
//! names, so `wallet_core::wallet::Wallet` is the domain's type.

pub mod api;
pub mod decision;
pub mod deployment;
mod json_path;

pub use wallet_domain::{
    archive, audit, auto_top_up, config, csv, events, ids, ledger, money, paging, purchase,
    rate_card, reports, stripe, time, token, wallet,
};
pub use wallet_domain::{
    Credits, DebitRequest, EntryKind, Hold, HoldRequest, HoldStatus, LedgerEntry, Pack,
    PurchaseCredit, Rejection, Wallet, WalletConfig,
};
