//! The AI Wallet's base and domain rules, as pure functions over plain data.
//!
//! Layers, each depending only on those above it in this list:
//! - **base**: `money`, `time`, `ids`, `csv`, `paging` (with [`paging::Invalid`]).
//! - **domain**: `rate_card`, `config`, `stripe`, `token`, then `auto_top_up`, `events`,
//!   `wallet`, `purchase`, `audit`, `ledger`, `archive` (the ledger's sealed
//!   segments), `reports`.
//!
//! Architecture Invariant: no I/O, no clock, no HTTP. Nothing here knows
//! the wire (`ApiError`, routes, the Worker ⇄ object protocol) or the
//! decision machine: those live in `wallet-core`, which depends on this
//! crate, so the compiler keeps the dependency one-way. Rules refuse with
//! [`wallet::Rejection`] or [`paging::Invalid`], never with HTTP errors.

pub mod archive;
pub mod audit;
pub mod auto_top_up;
pub mod config;
pub mod csv;
pub mod events;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod paging;
pub mod purchase;
pub mod rate_card;
pub mod reports;
pub mod stripe;
pub mod time;
pub mod token;
pub mod wallet;

pub use config::{Pack, WalletConfig};
pub use money::Credits;
pub use wallet::{
    DebitRequest, EntryKind, Hold, HoldRequest, HoldStatus, LedgerEntry, PurchaseCredit, Rejection,
    Wallet,
};
