//! The AI Wallet's rules as pure functions over plain data.
//!
//! This crate has no I/O, no clock and no Worker dependency: the Durable
//! Object shell loads state, calls in here with `now`, and persists what comes
//! back. Everything here runs under native `cargo test`.

pub mod api;
pub mod audit;
pub mod auto_top_up;
pub mod config;
pub mod decision;
pub mod deployment;
pub mod events;
pub mod ledger;
pub mod money;
pub mod purchase;
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
